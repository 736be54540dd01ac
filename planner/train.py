"""Training as part of the plan: a trained model is a model spec that knows its data.

``Frame.train(spec)`` returns a :class:`TrainedModel`: a declarative model spec whose
identity is the training data subplan's fingerprint + the training spec + the base
model. Nothing trains until something needs it: ``handle.fit()``, or a downstream
LLM node that uses the handle as its model being collected (the executor trains
first, in the same collect, sharing its subplans). A finished training is kept in
``<workspace>/models/trained/<fingerprint>/`` with a ``COMPLETE`` marker, so a rerun
does not retrain; an interrupted one resumes from its last checkpoint.

The plan fingerprint says what the training data *should* be; the rows that reach
the trainer can still differ between runs (an upstream LLM call that failed last
time and succeeds now). So a finished training also records the fingerprint of its
rows, and of its base model's content when the base is itself trained
(``LINEAGE.json``). :func:`ensure_trained` collects the data subplan every time
(served from the cache on a warm rerun) and retrains when the rows or the base
changed; :func:`content_fingerprint` (plan + rows + base content) is what keys the
cached generations of a trained model, so they never outlive its weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from collections.abc import Callable
from typing import Any

import numpy as np

from lazyllm.backends.registry import check_training_installed, trainer_factory
from lazyllm.core.errors import PlanError
from lazyllm.core.layout import trained_models_dir
from lazyllm.core.model_store import merge_adapter, resolve_model_dir
from lazyllm.core.protocols import ModelSpec, performance_only
from lazyllm.core.specs import Transformers

from lazyllm.core.hashing import hash_canonical
from .nodes import PlanNode, walk

__all__ = ["TrainedModel", "trained_dir", "ensure_trained", "is_trained", "content_fingerprint", "engine_spec",
           "weights_dir", "register_model_card_writer"]

LINEAGE_FILE = "LINEAGE.json"

log = logging.getLogger("lazyllm")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainedModel(ModelSpec):
    """A model trained by a plan: ``base`` fine-tuned with ``spec`` on the rows of ``data``.

    Usable wherever a model spec is (``frame.generate(column, handle, ...)``): the
    transformers engine loads the base with the trained adapter (or the full
    weights). Inference options (dtype, device, batch size, threads) come from the base.
    """

    provider = "transformers"

    spec: Any  # a lazyllm.training spec (SFT, DPO, ...)
    data: PlanNode = field(repr=False)
    batch_size: int = performance_only(32)

    @property
    def base(self) -> ModelSpec:
        return self.spec.base

    # inference options of the base model, so engines can treat this like its base
    def __getattr__(self, name: str) -> Any:
        if name in ("dtype", "device", "num_threads", "chat_template", "revision", "gguf_file"):
            return getattr(self.spec.base, name)
        raise AttributeError(name)

    @property
    def model(self) -> str:
        return getattr(self.spec.base, "model", "")

    def identity(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "trained": {
                "method": self.spec.method,
                "spec": self.spec,  # canonicalised without performance-only fields
                "data": self.data.fingerprint,
                "base": self.spec.base.identity(),
            },
        }

    @property
    def fingerprint(self) -> str:
        return hash_canonical({"model": self})

    @property
    def display_name(self) -> str:
        return f"{self.spec.method}({self.spec.base.display_name})#{self.fingerprint[:8]}"


def trained_dir(model: TrainedModel, workspace: Path) -> Path:
    """Where the trained weights of ``model`` live in a workspace."""
    return trained_models_dir(workspace) / model.fingerprint[:24]


def is_trained(model: TrainedModel, workspace: Path) -> bool:
    return (trained_dir(model, workspace) / "COMPLETE").is_file()


def untrained_models(roots: Sequence[Any], workspace: Path) -> list[TrainedModel]:
    """The trained-model handles that LLM nodes of ``roots`` (or of their training data)
    use and that are not trained in ``workspace`` yet: what a collect will train."""
    found: dict[str, TrainedModel] = {}
    todo = list(roots)
    while todo:
        for node in walk(todo.pop()):
            model = getattr(node, "model", None)
            while isinstance(model, TrainedModel) and model.fingerprint not in found:
                found[model.fingerprint] = model
                todo.append(model.data)
                model = model.spec.base
    return [m for m in found.values() if not is_trained(m, workspace)]


def _split(rows: list[dict[str, Any]], fraction: float | None, seed: int) -> tuple[list[dict], list[dict] | None]:
    if not fraction:
        return rows, None
    order = np.random.default_rng(seed).permutation(len(rows))
    n_eval = max(1, round(fraction * len(rows))) if len(rows) > 1 else 0
    eval_idx = set(order[:n_eval].tolist())
    train = [r for i, r in enumerate(rows) if i not in eval_idx]
    return train, [r for i, r in enumerate(rows) if i in eval_idx] or None


#: Writers of a trained model's card, called as ``writer(output_dir, facts)`` after a training
#: finishes (``facts``: the trainer's ``TrainResult.card``). The user-facing layer registers
#: :func:`lazyllm.cards.write_model_card` (cards are written above the backends).
_CARD_WRITERS: list[Callable[[Path, dict[str, Any]], None]] = []


def register_model_card_writer(writer: Callable[[Path, dict[str, Any]], None]) -> None:
    """Call ``writer(output_dir, facts)`` after each training this process finishes."""
    if writer not in _CARD_WRITERS:
        _CARD_WRITERS.append(writer)


def ensure_trained(model: TrainedModel, ctx: Any) -> dict[str, Any]:
    """Train ``model`` inside the executor context ``ctx`` unless a finished training exists.

    ``ctx`` is the executor's run context: ``ctx.evaluate(node)`` gives a node's rows as a
    ``polars.LazyFrame``, ``ctx.workspace``, ``ctx.say`` and ``ctx.engines`` (closed to free
    memory before training). The trainer is found through the registry
    (:func:`lazyllm.backends.registry.trainer_factory`, the ``Trainer`` protocol).

    Returns the metrics (from the ``COMPLETE`` marker when cached).

    Raises
    ------
    PlanError
        The training data is empty.
    MissingDependencyError
        trl or peft is not installed (extra ``train``).
    """
    check_training_installed(f"Training {model.display_name} (Frame.train)")
    trainer = trainer_factory()
    out = trained_dir(model, ctx.workspace.path)
    marker = out / "COMPLETE"
    base_content = None
    if isinstance(model.base, TrainedModel):  # a model trained from a trained model: train that first
        ensure_trained(model.base, ctx)
        base_content = content_fingerprint(model.base, ctx.workspace.path)
    df = ctx.evaluate(model.data).collect()
    rows = model.spec.standardize(df)
    if not rows:
        raise PlanError(f"train {model.display_name}: the training data has no usable rows "
                        f"(after dropping nulls in {model.spec.columns()}). Check the upstream filters.")
    train_rows, eval_rows = _split(rows, model.spec.validation, model.spec.seed)
    if marker.is_file():
        done = json.loads(marker.read_text())
        lineage = out / LINEAGE_FILE
        recorded_base = json.loads(lineage.read_text()).get("base_content") if lineage.is_file() else None
        if done.get("rows_fingerprint") == trainer.data_fingerprint(train_rows) and recorded_base == base_content:
            ctx.say(f"train {model.display_name}: cached in {out}")
            return done
        ctx.say(f"train {model.display_name}: the training rows or the base model changed since {out} was "
                "trained; training again")
        shutil.rmtree(out)
    base_dir = model_folder(model.base, ctx.workspace.path)
    options = model.spec.job_options()
    job = trainer.job(method=model.spec.method, base_dir=Path(base_dir), output_dir=out, train=train_rows,
                      eval=eval_rows, **options)
    for engine in list(ctx.engines.values()):  # free memory for training
        engine.close()
    ctx.engines.clear()
    ctx.say(f"train {model.display_name}: {len(train_rows)} rows"
            + (f" (+{len(eval_rows)} validation)" if eval_rows else "") + f" -> {out}")
    result = trainer.train(job)
    (out / LINEAGE_FILE).write_text(json.dumps({"base_content": base_content}) + "\n")
    facts = dict(getattr(result, "card", None) or {})
    if facts:
        for writer in _CARD_WRITERS:
            writer(out, facts)
    metrics = dict(result.metrics)
    metrics.update({"fingerprint": model.fingerprint, "data_fingerprint": model.data.fingerprint,
                    "adapter": result.adapter, "resumed_from": result.resumed_from})
    ctx.say(f"train {model.display_name}: done · final loss {metrics.get('final_train_loss')}")
    return metrics


def model_folder(spec: ModelSpec, workspace: Path) -> Path:
    """The loadable folder of a base model: a trained model's weights (:func:`weights_dir`),
    else the model store's folder for the spec (an alias converted once, a path, a Hub id)."""
    if isinstance(spec, TrainedModel):
        return weights_dir(spec, workspace)
    return resolve_model_dir(spec, workspace)


def weights_dir(model: TrainedModel, workspace: Path) -> Path:
    """The folder of a finished training's weights, ready to load: the full weights, or the
    base with the LoRA adapter merged once (``<trained dir>/merged``; a reward model's with
    its score head).

    Raises
    ------
    PlanError
        ``model`` is not trained in ``workspace`` yet.
    MissingDependencyError
        peft is missing (merging an adapter).
    """
    out = trained_dir(model, workspace)
    if not (out / "COMPLETE").is_file():
        raise PlanError(f"{model.display_name} is not trained yet in {workspace}: collect a frame that uses it "
                        "(the planner trains it first), or call handle.fit().")
    task = "sequence-classification" if model.spec.method == "reward" else "causal-lm"
    return merge_adapter(out, model_folder(model.base, workspace), task=task)


def engine_spec(model: TrainedModel, workspace: Path) -> ModelSpec:
    """What an engine gets for a trained model: a plain :class:`~lazyllm.Transformers` spec of
    its weights folder (:func:`weights_dir`) with the root base model's inference options
    (dtype, device, threads, engine). Engines and Ray replicas never see the training plan."""
    root = model.base
    while isinstance(root, TrainedModel):
        root = root.base
    if not isinstance(root, Transformers):
        raise PlanError(f"{model.display_name}: a trained model's base must be a Transformers spec, "
                        f"got {type(root).__name__}.")
    folder = weights_dir(model, workspace)
    return dataclasses.replace(root, model=str(folder), revision=None, gguf_file=None, batch_size=model.batch_size)


def content_fingerprint(model: TrainedModel, workspace: Path) -> str | None:
    """Fingerprint of what a finished training produced: the plan fingerprint, the rows
    that reached the trainer and, for a model trained from a trained model, the base's
    content fingerprint. None when ``model`` is not trained in ``workspace``."""
    marker = trained_dir(model, workspace) / "COMPLETE"
    if not marker.is_file():
        return None
    base = None
    if isinstance(model.base, TrainedModel):
        base = content_fingerprint(model.base, workspace)
        if base is None:
            return None
    rows = json.loads(marker.read_text()).get("rows_fingerprint")
    return hash_canonical({"model": model.fingerprint, "rows": rows, "base": base})
