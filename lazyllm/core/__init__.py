"""The ground floor of lazyllm: contracts every layer stands on.

lazyllm has three layers, and imports run one way between them::

    lazyllm (Frame, io, cards, hub, cli)  ->  lazyllm.planner  ->  lazyllm.backends
                 \\__________________________________|_______________/
                                   lazyllm.core

This package holds what all three share and nothing else: the error hierarchy
(:mod:`~lazyllm.core.errors`), secret redaction (:mod:`~lazyllm.core.redact`), the
protocols and value types engines, trainers and executors implement
(:mod:`~lazyllm.core.protocols`: ``Engine``, ``Trainer``, ``Executor``, ``Request``,
``Response``, ``ModelSpec``), the built-in model-spec classes engines accept
(:mod:`~lazyllm.core.specs`), canonical hashing (:mod:`~lazyllm.core.hashing`), the
model catalog and store (:mod:`~lazyllm.core.catalog`, :mod:`~lazyllm.core.model_store`:
aliases, paths and hub ids to loadable folders), API prices
(:mod:`~lazyllm.core.prices`) and the workspace's folder layout and run-log schema
(:mod:`~lazyllm.core.layout`). Nothing here imports anything above it; heavy optional
packages (torch, transformers) are imported inside the functions that need them.
``tests/test_layers.py`` walks every import and keeps it so.
"""
