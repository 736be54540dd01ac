"""Small process-level helpers every layer shares: an advisory file lock, the
``LAZYLLM_NUM_THREADS`` setting and the versions of the installed libraries.

Each exists once, here (they used to be copied into the engines, the trainer, the
run log and the cards).
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .errors import ParameterError

__all__ = ["file_lock", "env_threads", "library_versions", "package_version", "NOT_INSTALLED"]

NOT_INSTALLED = "not installed"


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive advisory lock (POSIX ``fcntl.flock``) on ``path`` for the block.

    The file is created when missing. Blocks until the lock is free. Without ``fcntl``
    (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(Path(path), "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def env_threads() -> int | None:
    """``LAZYLLM_NUM_THREADS`` (torch CPU threads per process), or None when unset.

    Raises
    ------
    ParameterError
        The variable is set to something other than a positive integer.
    """
    value = os.environ.get("LAZYLLM_NUM_THREADS", "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ParameterError(f"LAZYLLM_NUM_THREADS must be a positive integer, got {value!r}. "
                             "Set it to the number of CPU threads torch may use per process, or unset it.")
    return int(value)


def package_version(package: str) -> str:
    """The installed version of ``package`` (distribution name), or ``"not installed"``."""
    try:
        return version(package)
    except PackageNotFoundError:
        return NOT_INSTALLED


def library_versions(packages: Iterable[str]) -> dict[str, str]:
    """Python's version and the installed version of each of ``packages``
    (``"not installed"`` for a missing one)."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        out[pkg] = package_version(pkg)
    return out
