"""Synthetic data cards and model cards, built from the plan and the run log.

A **data card** describes how a frame's data was made: every node of the optimized
plan in execution order (kind, parameters, full prompt templates, sampling
parameters), every model (name, revision, license and citation from
:data:`lazyllm.core.catalog.MODEL_INFO`, "unknown" where not known), the
fingerprint of each node and of the whole result, the date, the versions of Python
and of the libraries that matter, the row count and, per LLM node, the cache hits,
LLM calls, tokens and cost of the latest collect (read from the workspace's run
log). It is written as JSON (``lazyllm_card.json``) and as a ``README.md`` with
Hugging Face dataset-card YAML metadata (tags ``synthetic`` and ``lazyllm``, source
models, license, size category).

A **model card** (:func:`model_card`) describes a trained model: base model,
training data fingerprint, hyperparameters, metrics and lineage, with Hugging Face
model-card metadata.

No card ever holds a secret: model identity fields and hyperparameters whose name
says key, token or secret are redacted, credentials inside URLs are removed, and the
values of environment variables named like secrets are blanked out of the text.

Examples
--------
>>> import lazyllm
>>> frame = lazyllm.from_dicts([{"q": "2+2?"}]).generate("a", lazyllm.TestModel(), prompt="Answer: {{ q }}")
>>> _ = frame.collect(progress=False)
>>> card = frame.card()
>>> card.rows, card.fingerprint == frame.fingerprint
(1, True)
>>> [n["kind"] for n in card.nodes]
['DataFrameSource', 'Generate']
>>> "Answer: {{ q }}" in card.to_markdown()
True
"""

from .base import (CARD_FORMAT, CARD_JSON, CARD_README, LIBRARIES, UNKNOWN, Card, is_frame, library_versions,
                   model_entry, model_id, size_category)
from .data_card import DataCard, data_card
from .model_card import ModelCard, model_card, write_model_card
from lazyllm.core.redact import scrub

__all__ = [
    "Card",
    "DataCard",
    "ModelCard",
    "data_card",
    "model_card",
    "write_model_card",
    "model_entry",
    "model_id",
    "size_category",
    "library_versions",
    "is_frame",
    "scrub",
    "CARD_FORMAT",
    "CARD_JSON",
    "CARD_README",
    "LIBRARIES",
    "UNKNOWN",
]
