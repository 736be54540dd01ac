"""The error hierarchy of lazyllm.

Every error lazyllm raises derives from :class:`LazyLLMError`; each subclass also
derives from the matching builtin, so ``except KeyError`` keeps working for a
missing column. Messages say what failed, list the valid options, and end with how
to fix it.

The classes live at the bottom of the dependency graph (``lazyllm.backends``) so
that the planner and the engines can raise them; users import them from
``lazyllm.errors``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from .redact import redact

__all__ = [
    "LazyLLMError",
    "ColumnNotFoundError",
    "TemplateError",
    "PlanError",
    "OptimizerError",
    "ModelNotFoundError",
    "MissingDependencyError",
    "EngineError",
    "CacheError",
    "HubError",
    "PathNotFoundError",
    "WorkspaceError",
    "ParameterError",
]


class LazyLLMError(Exception):
    """Base class of every error raised by lazyllm.

    The message of every subclass is redacted when the error is created (see
    :func:`lazyllm.core.redact.redact`): an API key or ``user:password@`` in a URL
    never shows in a traceback or a log.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__init__
        if getattr(init, "_lazyllm_redacts", False):
            return

        @functools.wraps(init)
        def __init__(self: BaseException, *args: Any, **kw: Any) -> None:
            init(self, *args, **kw)
            self.args = tuple(redact(a) if isinstance(a, str) else a for a in self.args)

        __init__._lazyllm_redacts = True  # type: ignore[attr-defined]
        cls.__init__ = __init__  # type: ignore[method-assign]


class ColumnNotFoundError(KeyError, LazyLLMError):
    """A template, expression or operator names a column the frame does not have."""

    def __init__(self, missing: str | Iterable[str], existing: Iterable[str], *, where: str) -> None:
        missing_list = [missing] if isinstance(missing, str) else sorted(missing)
        self.missing = tuple(missing_list)
        self.existing = tuple(existing)
        names = ", ".join(repr(m) for m in missing_list)
        have = ", ".join(repr(c) for c in self.existing) or "(none)"
        self.message = (
            f"{where} reads column {names}, which the frame does not have. "
            f"Existing columns: {have}. "
            "Fix the name in the template/expression or add the column upstream (with_columns)."
        )
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


class TemplateError(ValueError, LazyLLMError):
    """A prompt template does not parse, or renders to nothing usable."""


class PlanError(ValueError, LazyLLMError):
    """A plan is invalid: bad parameters, incompatible schemas, unknown model."""


class OptimizerError(RuntimeError, LazyLLMError):
    """An optimizer rule produced an invalid plan (the message names the rule)."""


class ModelNotFoundError(FileNotFoundError, LazyLLMError):
    """A model alias, path or hub id cannot be resolved to weights on this machine."""


class MissingDependencyError(ImportError, LazyLLMError):
    """An optional dependency is not installed; the message names the extra (or the command)
    that installs it.

    ``extra`` is the name of a pyproject extra (``"train"``), or a whole command when it
    contains a space or a slash (``"bash scripts/install_vllm.sh"``).
    """

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        self.package = package
        self.extra = extra
        if " " in extra or "/" in extra:
            how = extra
        else:
            how = (f"bash scripts/install.sh {extra} (from the lazyllm checkout; it installs into .venv), "
                   f"or pip install -e '.[{extra}]' in the environment that runs lazyllm")
        super().__init__(f"{purpose} needs the package {package!r}, which is not installed. Install it with: {how}.")


class EngineError(RuntimeError, LazyLLMError):
    """An engine failed as a whole (could not load, crashed); per-row failures do not raise."""


class CacheError(RuntimeError, LazyLLMError):
    """The LMDB cache cannot be opened or holds data in an unknown format."""


class HubError(RuntimeError, LazyLLMError):
    """Publishing to or reading from the Hugging Face Hub failed (no token, no access, network)."""


class PathNotFoundError(FileNotFoundError, LazyLLMError):
    """A file or folder that a call reads (a dataset card, a model folder) does not exist."""


class WorkspaceError(OSError, LazyLLMError):
    """The workspace argument is not a usable folder (a file, or a folder that cannot be created)."""


class ParameterError(PlanError, TypeError):
    """An operator or model-spec parameter has the wrong type or is out of range.

    Also a :class:`PlanError` (so a ``ValueError``) and a ``TypeError``: code that caught
    either before keeps working.
    """
