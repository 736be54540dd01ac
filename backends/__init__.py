"""Engines and trainers behind lazyllm's planner.

Installed as ``lazyllm.backends``. The planner only depends on
:mod:`lazyllm.core.protocols`; concrete engines are found through the
:mod:`lazyllm.backends.registry` (entry points group ``lazyllm.backends``) and
imported lazily.
"""
