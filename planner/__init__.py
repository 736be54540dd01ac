"""The planner: logical plan nodes, fingerprints, optimizer rules, executor, scheduler, cache.

Installed as ``lazyllm.planner``; layer 2 of 4 (see ``ARCHITECTURE.md``). It stands on
:mod:`lazyllm.core` and reaches the backends only through
:mod:`lazyllm.backends.registry` (engines, the trainer, executors) and a few
engine-independent helpers (answer parsing, log-probability normalisation, progress
settings); it never imports a concrete engine, trainer or executor.
"""
