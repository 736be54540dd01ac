"""Find engines by provider name: entry points group ``lazyllm.backends``, imported lazily.

Third-party packages add an engine by declaring, in their pyproject::

    [project.entry-points."lazyllm.backends"]
    myprovider = "mypackage.engine:MyEngine"

and a spec class whose ``provider`` is ``"myprovider"``. :func:`register_engine`
does the same at run time (for notebooks and tests).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from lazyllm.core.errors import MissingDependencyError, ParameterError

__all__ = ["register_engine", "engine_factory", "available_providers", "trainer_factory", "resolve_executor",
           "check_training_installed"]

# provider -> "module:attr"; the built-in engines, used when the package metadata is
# not installed (running from a source checkout) and as the table of extras to name.
_BUILTIN: dict[str, tuple[str, str | None]] = {
    "transformers": ("lazyllm.backends.transformers:TransformersEngine", None),
    "test": ("lazyllm.backends.testing:DeterministicEngine", None),
    "openai": ("lazyllm.backends.openai_api:OpenAIEngine", "openai"),
    "vllm": ("lazyllm.backends.vllm_engine:VLLMEngine", "vllm"),
}
# third-party import name -> extra that installs it
_EXTRA_FOR_MODULE = {"vllm": "vllm", "openai": "openai", "trl": "train", "peft": "train", "ray": "ray",
                     "duckdb": "bash scripts/install.sh"}  # duckdb is a base dependency: reinstall

_RUNTIME: dict[str, Callable[..., Any]] = {}


def register_engine(provider: str, factory: Callable[..., Any]) -> None:
    """Register ``factory(spec, workspace=Path) -> Engine`` for ``provider`` in this process."""
    _RUNTIME[provider] = factory


def available_providers() -> list[str]:
    names = set(_BUILTIN) | set(_RUNTIME)
    names |= {ep.name for ep in entry_points(group="lazyllm.backends")}
    return sorted(names)


def _load(target: str, provider: str) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        if root == "lazyllm":  # our own module is missing: a broken install, not an extra
            raise
        extra = _EXTRA_FOR_MODULE.get(root, provider)
        raise MissingDependencyError(root or module_name, extra, f"The {provider!r} engine") from exc
    return getattr(module, attr)


def engine_factory(provider: str) -> Callable[..., Any]:
    """The engine class (or factory) for ``provider``; imports it on first use.

    Raises
    ------
    PlanError
        No engine is registered under that name (the message lists the known ones).
    MissingDependencyError
        The engine's optional dependency is missing (the message names the extra).
    """
    if provider in _RUNTIME:
        return _RUNTIME[provider]
    for ep in entry_points(group="lazyllm.backends"):
        if ep.name == provider:
            return _load(ep.value, provider)
    if provider in _BUILTIN:
        return _load(_BUILTIN[provider][0], provider)
    raise ParameterError(
        f"No engine is registered for provider {provider!r}. Known providers: "
        f"{', '.join(available_providers())}. Install the package that provides it, "
        "or call lazyllm.backends.registry.register_engine()."
    )


#: third-party modules training needs (extra ``train``)
TRAINING_MODULES = ("trl", "peft")


def check_training_installed(purpose: str) -> None:
    """Raise :class:`MissingDependencyError` naming the ``train`` extra when ``trl`` or
    ``peft`` is not installed (found without importing them: cheap).

    Raises
    ------
    MissingDependencyError
        The first of :data:`TRAINING_MODULES` that is missing.
    """
    import importlib.util

    for module in TRAINING_MODULES:
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(module, _EXTRA_FOR_MODULE[module], purpose)


# ------------------------------------------------------------------------------------ trainers

#: name -> "module:attr" of the built-in trainers (the ``Trainer`` protocol of lazyllm.core.protocols);
#: third-party packages add one under the entry-point group ``lazyllm.trainers``.
_TRAINERS: dict[str, str] = {"trl": "lazyllm.backends.trainers:TRLTrainer"}


def trainer_factory(name: str = "trl") -> Any:
    """The trainer registered as ``name`` (an object implementing
    :class:`lazyllm.core.protocols.Trainer`); imports it on first use.

    Raises
    ------
    PlanError
        No trainer is registered under that name.
    MissingDependencyError
        Its optional dependency is missing (the message names the extra).
    """
    for ep in entry_points(group="lazyllm.trainers"):
        if ep.name == name:
            return _load(ep.value, name)()
    if name in _TRAINERS:
        return _load(_TRAINERS[name], name)()
    raise ParameterError(f"No trainer is registered as {name!r}. Known trainers: {', '.join(sorted(_TRAINERS))}.")


# ------------------------------------------------------------------------------------ executors

#: name -> "module:attr" of the built-in executors (the ``Executor`` protocol); "local" is
#: this process (no executor object). Third parties: entry-point group ``lazyllm.executors``.
_EXECUTORS: dict[str, str] = {"ray": "lazyllm.backends.distributed:RayExecutor"}


def resolve_executor(executor: Any) -> Any:
    """The executor a collect uses: None for this process, else an object implementing
    :class:`lazyllm.core.protocols.Executor`.

    ``executor``: None (reads ``LAZYLLM_EXECUTOR``: ``local`` or ``ray``; default ``local``),
    ``"local"``, a registered name such as ``"ray"``, or an executor object.

    Raises
    ------
    PlanError
        An unknown executor name.
    MissingDependencyError
        The executor's package (Ray: extra ``ray``) is not installed; raised before
        anything runs.
    """
    if executor is None:
        executor = os.environ.get("LAZYLLM_EXECUTOR", "local") or "local"
    if not isinstance(executor, str):
        executor.check_available()
        return executor
    if executor == "local":
        return None
    target = next((ep.value for ep in entry_points(group="lazyllm.executors") if ep.name == executor),
                  _EXECUTORS.get(executor))
    if target is None:
        raise ParameterError(f"Unknown executor {executor!r}: use 'local', "
                        f"{', '.join(repr(n) for n in sorted(_EXECUTORS))} or lazyllm.RayExecutor(...).")
    chosen = _load(target, executor)()
    chosen.check_available()
    return chosen
