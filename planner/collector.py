"""Python's cyclic garbage collector around the scheduler's whole columns of objects.

A run keeps a few acyclic objects per row alive until it ends (rendered messages, requests,
responses, keys). CPython starts a full (generation 2) collection whenever the objects that
reached the oldest generation since the last one exceed a quarter of those already there
(the ``long_lived_pending`` rule of ``Modules/gcmodule.c``), and each full collection walks
every tracked object. A run that builds millions of them pays a full walk of its whole heap
each time it grows by a quarter: measured on a cold 100,000-row run with the test engine,
the full collections took 14–18 µs per row, a third of lazyllm's own work
(``benchmarks/overhead.py``, ``cold: cyclic GC``).

Two tools, both process-wide (the collector is) and both putting things back as they were:

- :func:`gc_paused` turns the collector off while a whole column is built in one go (no
  cycle can form there);
- :func:`paced_collections` keeps the young collections (generations 0 and 1, which free
  the short-lived cycles engines and clients make) and replaces the automatic full ones by
  full collections paced in wall time, at most a fixed share of it (:data:`FULL_SHARE`),
  so a cycle that lived long enough to reach the oldest generation is still freed during a
  long run, not only after it. This is the pacing of collectors with a time budget (Go's
  ``GOGC`` runs its collector by heap growth too; here the budget is a share of time).
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Callable, Iterator

__all__ = ["gc_paused", "paced_collections", "collect_deferred", "FullCollections", "FULL_SHARE", "FULL_FIRST_AFTER"]

#: Largest share of wall time full collections take inside :func:`paced_collections`.
FULL_SHARE = 0.05
#: Seconds before the first full collection inside :func:`paced_collections` (its cost is not known yet).
FULL_FIRST_AFTER = 60.0
_NEVER = 2**31 - 1  # a generation-2 threshold no count of generation-1 collections reaches

_lock = threading.Lock()
_depth = 0
_saved: tuple[int, ...] | None = None
_deferred = False  # the automatic rule would have started a full collection inside a block


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while whole columns of records, keys and requests
    are built (none of them forms a cycle): with millions of new objects each full collection
    walks them all again (a third of a warm 1M-row run); back on, as it was, afterwards.

    Yields
    ------
    None
        Inside the block the collector is off (objects are still freed by reference counting).
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class FullCollections:
    """Full collections paced in wall time: :meth:`tick` runs one when the time since the last
    is at least its cost divided by ``share`` (and ``first_after`` seconds for the first).

    Parameters
    ----------
    share : float
        Largest share of wall time the full collections take (default :data:`FULL_SHARE`).
    first_after : float
        Seconds from the start to the first full collection (default :data:`FULL_FIRST_AFTER`).
    clock : callable, optional
        Seconds, monotonic (default :func:`time.monotonic`); tests pass their own.
    """

    def __init__(self, share: float = FULL_SHARE, first_after: float = FULL_FIRST_AFTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < share < 1:
            raise ValueError(f"share must be between 0 and 1, got {share}")
        self.share, self._clock = share, clock
        self._due = clock() + first_after
        self.collections = 0

    def tick(self) -> bool:
        """Run a full collection if one is due and the collector is on; True if it ran.

        Cost: one clock read when none is due; a full collection walks every tracked object.
        """
        now = self._clock()
        if now < self._due or not gc.isenabled():
            return False
        gc.collect(2)
        done = self._clock()
        self._due = done + (done - now) / self.share
        self.collections += 1
        return True


@contextlib.contextmanager
def paced_collections(share: float = FULL_SHARE, first_after: float = FULL_FIRST_AFTER) -> Iterator[FullCollections]:
    """Automatic full collections off, young ones on, inside the block; full collections
    then run only through the yielded :class:`FullCollections`' ``tick``.

    Nested and concurrent blocks (threads) share one setting: the thresholds of
    :func:`gc.get_threshold` are put back when the outermost block ends.

    Parameters
    ----------
    share, first_after : float
        As :class:`FullCollections`.

    Yields
    ------
    FullCollections
        Call its ``tick`` from the loop the block runs (each engine poll).
    """
    global _depth, _saved, _deferred
    with _lock:
        if _depth == 0:
            _saved = gc.get_threshold()
            gc.set_threshold(_saved[0], _saved[1], _NEVER)
        _depth += 1
    try:
        yield FullCollections(share, first_after)
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                # generation-1 collections since the last full one, past the threshold: one was held back
                _deferred = _deferred or gc.get_count()[2] > _saved[2]
                gc.set_threshold(*_saved)
                _saved = None


def collect_deferred() -> bool:
    """The full collection :func:`paced_collections` held back, run now, once no block is active.

    Call it once the objects of the block's run are freed (the end of a scheduler run):
    the collection then walks a small heap, and the automatic rule, which still counts the
    run's promoted objects, does not start one over the next run's objects instead.

    Returns
    -------
    bool
        Whether a full collection ran (only when one was held back and the collector is on).

    Cost: one full collection of the objects alive now.
    """
    global _deferred
    with _lock:
        if _depth or not _deferred or not gc.isenabled():
            return False
        _deferred = False
    gc.collect(2)
    return True
