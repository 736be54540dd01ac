"""Engines, trainers and executors behind lazyllm's planner.

Installed as ``lazyllm.backends``; layer 1 of 4 (see ``ARCHITECTURE.md``). Everything
here implements a protocol of :mod:`lazyllm.core.protocols` (``Engine``, ``Trainer``,
``Executor``) on specs of :mod:`lazyllm.core.specs`, and is found through
:mod:`lazyllm.backends.registry` (entry-point groups ``lazyllm.backends``,
``lazyllm.trainers``, ``lazyllm.executors``), imported lazily. Nothing here imports the
planner or the user-facing package; an engine never sees a plan (a trained model
arrives as a plain spec of its weights folder).
"""
