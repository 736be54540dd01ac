"""Credentials never reach disk or an error message: redaction of text and JSON-like data.

Every place that writes text which might hold a credential (error columns, batch
records, run logs, exception messages, cards) passes it through :func:`redact`:

- API keys this process knows: those given to a model spec (registered with
  :func:`register_secret` when the spec is built) and the values of environment
  variables whose name says secret (``OPENAI_API_KEY``, ``HF_TOKEN``...);
- text shaped like a key (``sk-...``, ``hf_...``, ``Bearer ...``), whatever its source,
  so a server that echoes the key back in its error text is redacted too;
- ``user:password@`` in URLs (the user name goes as well).

This module is on the ground floor: it imports nothing from lazyllm.

>>> redact("HTTP 401: bad key sk-abcdefghijklmnop at http://me:pw@host:8000/v1")
'HTTP 401: bad key <redacted> at http://<redacted>@host:8000/v1'
>>> redact_url("https://me:pw@host/v1")
'https://host/v1'
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["REDACTED", "register_secret", "redact", "redact_url", "scrub", "is_secret_name"]

REDACTED = "<redacted>"

_SECRETS: set[str] = set()
_LOCK = threading.Lock()
_MIN_SECRET = 6  # shorter values would blank out ordinary words

# scheme://user[:password]@  (user info of any URL inside text)
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^\s/@:?#\"']*(?::[^\s/@?#\"']*)?@")
# key-shaped tokens: OpenAI-style sk-..., Hugging Face hf_..., and bearer credentials
_KEY_SHAPED = re.compile(r"\b(?:sk-[A-Za-z0-9_\-]{8,}|hf_[A-Za-z0-9]{16,})|(?<=[Bb]earer )[^\s\"',<]+")


def is_secret_name(name: str) -> bool:
    """Whether a field or variable name says it holds a secret (api_key, HF_TOKEN, client_secret...).

    Counts and tools named after tokens (``max_tokens``, ``tokenizer``) are not secrets.

    >>> is_secret_name("api_key"), is_secret_name("hubToken"), is_secret_name("max_tokens")
    (True, True, False)
    """
    low = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
    if any(word in low for word in ("key", "secret", "password", "passwd", "credential")):
        return True
    return "token" in re.sub(r"tokens|tokenizer|token_count", "", low)


def register_secret(value: str | None) -> None:
    """Remember ``value`` (an API key, a password) so that :func:`redact` blanks it out everywhere."""
    if isinstance(value, str) and len(value) >= _MIN_SECRET:
        with _LOCK:
            _SECRETS.add(value)


def _known_secrets() -> list[str]:
    env = {v for k, v in os.environ.items() if is_secret_name(k) and len(v) >= 8}
    with _LOCK:
        found = env | _SECRETS
    return sorted(found, key=len, reverse=True)  # longest first: a key containing another


def redact(text: str, *secrets: str | None) -> str:
    """``text`` without credentials: known secrets (plus ``secrets``), key-shaped tokens, URL user info.

    Parameters
    ----------
    text : str
        Any message: a server's error text, an exception message, a JSON document.
    *secrets : str
        Further values to blank out (for example the key an engine is using).
    """
    if not isinstance(text, str) or not text:
        return text
    for secret in (*[s for s in secrets if isinstance(s, str) and len(s) >= _MIN_SECRET], *_known_secrets()):
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    return _KEY_SHAPED.sub(REDACTED, text)


def redact_url(url: str) -> str:
    """``url`` without ``user:password@`` (the form recorded in batch records and cards)."""
    if not isinstance(url, str) or "@" not in url or "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def scrub(value: Any) -> Any:
    """A copy of JSON-like ``value`` without secrets.

    Mapping entries whose key names a secret (see :func:`is_secret_name`) become
    ``"<redacted>"`` (when set); strings lose URL credentials and known secrets.

    >>> scrub({"api_key": "sk-123", "max_tokens": 5, "url": "https://u:p@host/v1"})
    {'api_key': '<redacted>', 'max_tokens': 5, 'url': 'https://host/v1'}
    """
    if isinstance(value, Mapping):
        return {k: (REDACTED if is_secret_name(str(k)) and v not in (None, "") else scrub(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        return redact(redact_url(value))
    return value
