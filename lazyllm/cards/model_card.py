"""The model card of a trained model: base model, training data fingerprint,
hyperparameters, metrics and lineage, with Hugging Face model-card metadata."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


from lazyllm.core.protocols import ModelSpec
from lazyllm.core.redact import redact, scrub

from .base import (CARD_FORMAT, UNKNOWN, _TRAINING_LIBRARIES, Card, _fence, _header, _jsonable, _now, _table,
                   library_versions, model_entry)


@dataclass(frozen=True)
class ModelCard(Card):
    """A model card for a trained model: JSON data plus a Hugging Face README."""

    def metadata(self) -> dict[str, Any]:
        """The README's YAML metadata (Hugging Face model card) as a dict."""
        from huggingface_hub import ModelCardData

        d = self.data
        base = d["base_model"]
        return ModelCardData(
            base_model=base["hub_id"] or base["model"],
            library_name=d["library_name"],
            license=d["license"],
            tags=d["tags"],
            datasets=d.get("datasets") or None,
            model_name=d.get("title"),
            lazyllm={"training_data_fingerprint": d["training_data"]["fingerprint"]},
        ).to_dict()

    def to_markdown(self) -> str:
        """A ``README.md``: Hugging Face model-card YAML front matter, then the card as text."""
        d = self.data
        base = d["base_model"]
        parts = _header(self.metadata(), d["title"], d.get("description"))
        method = f" with {d['method']}" if d.get("method") else ""
        parts.append(f"Fine-tuned from `{base['hub_id'] or base['model'] or base['name']}`{method} by lazyllm, on "
                     f"synthetic data with fingerprint `{d['training_data']['fingerprint']}`.")
        parts.append("## Base model\n\n" + _table(("model", "revision", "license"),
                                                  [(base["name"], base["revision"], base["license"])]))
        if base["citation"] != UNKNOWN:
            parts.append(_fence(base["citation"], "bibtex"))
        parts.append("## Hyperparameters\n\n" + (_table(("name", "value"), [
            (k, json.dumps(v) if not isinstance(v, str) else v) for k, v in d["hyperparameters"].items()])
            if d["hyperparameters"] else "none recorded"))
        parts.append("## Metrics\n\n" + (_table(("metric", "value"), d["metrics"].items())
                                         if d["metrics"] else "none recorded"))
        if d["lineage"]:
            parts.append("## Lineage\n\n" + _fence(json.dumps(d["lineage"], indent=2, ensure_ascii=False), "json"))
        parts.append("## Environment\n\n" + _table(("library", "version"), d["versions"].items()))
        return redact("\n\n".join(parts) + "\n")


def model_card(
    base_model: ModelSpec | str,
    training_data_fingerprint: str,
    hyperparameters: Mapping[str, Any],
    metrics: Mapping[str, Any],
    lineage: list[dict[str, Any]] | None = None,
    *,
    method: str | None = None,
    title: str | None = None,
    description: str | None = None,
    license: str | None = None,
    library_name: str | None = None,
    datasets: Sequence[str] = (),
    tags: Sequence[str] = (),
) -> ModelCard:
    """The card of a trained model.

    Parameters
    ----------
    base_model : ModelSpec or str
        The model that was fine-tuned (a spec, an alias or a Hub id).
    training_data_fingerprint : str
        Fingerprint of the training frame (``Frame.fingerprint``).
    hyperparameters : dict
        Training settings (learning rate, epochs, LoRA rank...). Entries named like
        secrets (``hub_token``...) are redacted.
    metrics : dict
        Final metrics (name -> number), e.g. ``{"train_loss": 1.23}``.
    lineage : list of dict, optional
        Where the model comes from, oldest first (e.g. data cards' fingerprints,
        earlier training stages).
    method : str, optional
        Training method (``"SFT"``, ``"DPO"``, ``"ORPO"``...); added to the tags.
    license : str, optional
        Default: the base model's license from ``MODEL_INFO``, else ``"unknown"``.
    library_name : str, optional
        Default ``"peft"`` when a hyperparameter name starts with ``lora``, else ``"transformers"``.
    datasets : list of str
        Hub ids of the training datasets, when published.

    Returns
    -------
    ModelCard

    Notes
    -----
    Cost: none (no model is loaded).
    """
    base = model_entry(base_model)
    short_name = (base["hub_id"] or base["model"] or base["name"]).rsplit("/", 1)[-1]
    hp = scrub(_jsonable(dict(hyperparameters)))
    if library_name is None:
        library_name = "peft" if any(str(k).lower().startswith(("lora", "peft")) for k in hp) else "transformers"
    tag_list = ["lazyllm", "trl"] + ([method.lower()] if method else []) + list(tags)
    data = {
        "format": CARD_FORMAT,
        "kind": "lazyllm model card",
        "title": title or f"{short_name} fine-tuned with lazyllm",
        "description": description,
        "method": method,
        "base_model": base,
        "library_name": library_name,
        "license": license or (base["license"] if base["license"] != UNKNOWN else UNKNOWN),
        "tags": list(dict.fromkeys(tag_list)),
        "datasets": list(datasets),
        "training_data": {"fingerprint": training_data_fingerprint},
        "hyperparameters": hp,
        "metrics": scrub(_jsonable(dict(metrics))),
        "lineage": scrub(_jsonable(list(lineage or []))),
        "created_at": _now(),
        "versions": library_versions(_TRAINING_LIBRARIES),
    }
    return ModelCard(data)


def write_model_card(output_dir: str | os.PathLike[str], facts: Mapping[str, Any]) -> ModelCard:
    """Write the card of a finished training into ``output_dir`` (``README.md`` and
    ``lazyllm_card.json``). ``facts``: what the trainer reports
    (``TrainResult.card``: ``base_model``, ``data_fingerprint``, ``hyperparameters``,
    ``metrics``, ``lineage``, ``method``). Registered with the planner
    (:func:`lazyllm.planner.train.register_model_card_writer`) when lazyllm is imported.
    """
    card = model_card(
        str(facts["base_model"]),
        str(facts["data_fingerprint"]),
        dict(facts.get("hyperparameters") or {}),
        dict(facts.get("metrics") or {}),
        lineage=list(facts.get("lineage") or []),
        method=facts.get("method"),
    )
    card.save(output_dir)
    return card
