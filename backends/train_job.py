"""A training job and its result: what the trainer is asked to do, validated, fingerprinted.

:class:`TrainJob` names the method, a local Hugging Face folder of the base causal LM,
standardized rows (:mod:`lazyllm.backends.train_data`) and the hyperparameters;
:class:`TrainResult` is what a finished training left behind. The run itself is
:func:`lazyllm.backends.trainers.train`; the TRL specifics are in
:mod:`lazyllm.backends.trl_adapter`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lazyllm.core.errors import ParameterError

from .launch import device_plan

__all__ = ["METHODS", "PREFERENCE_METHODS", "TrainJob", "TrainResult", "CHECKPOINTS_DIR", "COMPLETE_FILE",
           "METRICS_FILE", "JOB_FILE"]

#: What a training leaves in its output folder.
CHECKPOINTS_DIR = "checkpoints"
COMPLETE_FILE = "COMPLETE"
METRICS_FILE = "metrics.json"
JOB_FILE = "job.json"

#: Bumped when the job fingerprint's payload changes meaning.
#: Training methods, in the order of the module docstring.
METHODS = ("sft", "dpo", "orpo", "kto", "simpo", "reward")


PREFERENCE_METHODS = ("dpo", "orpo", "kto", "simpo")


_FORMAT = 1


_ROW_KEYS = {
    "sft": ("prompt", "completion"),
    "dpo": ("prompt", "chosen", "rejected"),
    "orpo": ("prompt", "chosen", "rejected"),
    "simpo": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
    "reward": ("chosen", "rejected"),
}


_ROW_FORMATS = {
    "sft": '{"prompt": str, "completion": str} or {"messages": [{"role": ..., "content": ...}, ...]}',
    "dpo": '{"prompt": str, "chosen": str, "rejected": str}',
    "orpo": '{"prompt": str, "chosen": str, "rejected": str}',
    "simpo": '{"prompt": str, "chosen": str, "rejected": str}',
    "kto": '{"prompt": str, "completion": str, "label": bool}',
    "reward": '{"chosen": str, "rejected": str} (optional "prompt": str)',
}


_NOT_FINGERPRINTED = ("base_dir", "output_dir", "save_steps", "logging_steps", "devices")


@dataclass(frozen=True)
class TrainJob:
    """One training: method, base model folder, rows and hyperparameters.

    Parameters
    ----------
    method : str
        ``"sft"``, ``"dpo"``, ``"orpo"``, ``"kto"``, ``"simpo"`` or ``"reward"`` (see the
        module docstring for each method's paper and TRL trainer).
    base_dir : pathlib.Path
        A local Hugging Face folder of the base causal LM (config, tokenizer,
        safetensors); :func:`lazyllm.core.model_store.resolve_model_dir` gives one.
    output_dir : pathlib.Path
        Where the adapter or weights, ``checkpoints/``, ``metrics.json``, ``README.md``
        and ``COMPLETE`` go (created).
    train : list of dict
        Standardized rows (module docstring), at least one.
    eval : list of dict, optional
        Rows in the same format; adds ``eval_loss`` to the metrics.
    lora : dict, optional
        ``{"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": [...] | "all-linear"}``
        plus any other :class:`peft.LoraConfig` field; ``None``: full fine-tuning.
        Without ``target_modules`` PEFT picks the architecture's default (Llama:
        ``q_proj``, ``v_proj``).
    epochs : float
        Passes over ``train`` (ignored when ``max_steps`` is set).
    max_steps : int, optional
        Optimizer steps to run in all (overrides ``epochs``).
    learning_rate : float
        Peak AdamW learning rate (linear decay to 0).
    batch_size : int
        Rows per device per forward pass (``kto``: at least 2, its KL estimate pairs
        rows within a batch).
    gradient_accumulation : int
        Forward passes per optimizer step; effective batch = ``batch_size`` x this x
        processes.
    max_length : int
        Tokens per example (prompt + completion, chat template included); longer
        examples are truncated, except by ``reward``, whose trainer drops them.
    seed : int
        Seed of LoRA initialisation, the reward head, data order and dropout.
    beta : float, optional
        Strength of DPO / ORPO / KTO / SimPO (TRL's default when ``None``: 0.1); not
        accepted by ``sft`` and ``reward``.
    save_steps : int
        Checkpoint (and evaluate, with ``eval``) every this many optimizer steps.
    logging_steps : int
        Record the loss every this many optimizer steps.
    devices : int, list of str or None
        ``None``: this process (first GPU if any, else CPU). ``2`` or
        ``["cuda:0", "cuda:1"]``: that many worker processes, launched by lazyllm
        (FSDP on GPUs, DDP over gloo on CPU, see :func:`train`).
    extra : dict
        More fields of the TRL config (``SFTConfig``, ``DPOConfig``, ``ORPOConfig``,
        ``KTOConfig``, ``CPOConfig``, ``RewardConfig`` of trl 1.16), e.g.
        ``{"lr_scheduler_type": "cosine", "warmup_steps": 10}``; they override
        lazyllm's settings. ``model_init_kwargs`` go to ``from_pretrained``.

    Raises
    ------
    PlanError
        An unknown method, a number out of range, ``beta`` for ``sft`` / ``reward``,
        ``batch_size < 2`` for ``kto``, no training rows or a bad ``lora`` dict.
    """

    method: str
    base_dir: Path
    output_dir: Path
    train: list[dict]
    eval: list[dict] | None = None
    lora: dict | None = None
    epochs: float = 1.0
    max_steps: int | None = None
    learning_rate: float = 2e-4
    batch_size: int = 4
    gradient_accumulation: int = 1
    max_length: int = 512
    seed: int = 0
    beta: float | None = None
    save_steps: int = 50
    logging_steps: int = 1
    devices: int | list[str] | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_dir", Path(self.base_dir))
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        if self.method not in METHODS:
            raise ParameterError(f"Unknown training method {self.method!r}. Valid methods: {', '.join(METHODS)}. "
                            "Pass one of them as TrainJob(method=...).")
        if not isinstance(self.train, list) or not self.train:
            got = f"{len(self.train)} rows" if isinstance(self.train, list) else type(self.train).__name__
            raise ParameterError(f"A {self.method} training needs a non-empty list of training rows; got {got}. "
                            f"Pass rows like {_ROW_FORMATS[self.method]}.")
        if self.eval is not None and (not isinstance(self.eval, list) or not self.eval):
            raise ParameterError("eval must be a non-empty list of rows or None. Pass eval=None to skip evaluation.")

        def positive(name: str, value: Any, kind: type | tuple[type, ...] = int, minimum: float = 1) -> None:
            if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
                raise ParameterError(f"TrainJob.{name}={value!r} is invalid: it must be an integer >= {minimum}. "
                                "Fix the value.")

        positive("batch_size", self.batch_size)
        positive("gradient_accumulation", self.gradient_accumulation)
        positive("max_length", self.max_length, minimum=8)
        positive("save_steps", self.save_steps)
        positive("logging_steps", self.logging_steps)
        positive("seed", self.seed, minimum=0)
        if self.max_steps is not None:
            positive("max_steps", self.max_steps)
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, float)) or not self.epochs > 0:
            raise ParameterError(f"TrainJob.epochs={self.epochs!r} is invalid: it must be > 0. Fix the value.")
        if isinstance(self.learning_rate, bool) or not isinstance(self.learning_rate, (int, float)) \
                or not 0 < self.learning_rate < 1:
            raise ParameterError(f"TrainJob.learning_rate={self.learning_rate!r} is invalid: it must lie in (0, 1) "
                            "(typical: 2e-4 with LoRA, 1e-5 for full fine-tuning).")
        if self.beta is not None:
            if self.method not in PREFERENCE_METHODS:
                raise ParameterError(f"beta is a strength of {', '.join(PREFERENCE_METHODS)}; method {self.method!r} "
                                "has none. Leave beta=None.")
            if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not self.beta > 0:
                raise ParameterError(f"TrainJob.beta={self.beta!r} is invalid: it must be > 0 (or None for TRL's default).")
        if self.method == "kto" and self.batch_size < 2:
            raise ParameterError(f"KTO needs batch_size >= 2 (its KL term pairs rows within a batch); got "
                            f"{self.batch_size}. Pass batch_size=2 or more.")
        if self.lora is not None:
            if not isinstance(self.lora, Mapping):
                raise ParameterError(f"lora={self.lora!r} must be a dict such as {{'r': 8, 'alpha': 16}} or None.")
            r = self.lora.get("r", 8)
            if isinstance(r, bool) or not isinstance(r, int) or r < 1:
                raise ParameterError(f"lora['r']={r!r} is invalid: the LoRA rank must be an integer >= 1.")
        if not isinstance(self.extra, Mapping):
            raise ParameterError(f"extra={self.extra!r} must be a dict of TRL config fields.")

    @property
    def world_size(self) -> int:
        """Number of processes the training runs in."""
        return device_plan(self.devices).nproc

    def fingerprint(self) -> str:
        """Hex SHA-256 of what decides the trained weights.

        Covers the method, rows, hyperparameters, ``extra``, the number of processes
        (it changes the effective batch) and the base folder's name; leaves out the
        paths, ``save_steps``, ``logging_steps`` and which devices are used.
        """
        payload = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _NOT_FINGERPRINTED}
        payload["base_model"] = self.base_dir.name
        payload["world_size"] = self.world_size
        payload["format"] = _FORMAT
        return _sha256(payload)


@dataclass
class TrainResult:
    """What a finished training left behind.

    Attributes
    ----------
    output_dir : pathlib.Path
        The folder of the trained model (load it with ``PeftModel.from_pretrained``
        over the base when ``adapter``, else ``AutoModelFor*.from_pretrained``).
    adapter : bool
        True: a PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``);
        False: full weights (``config.json`` + ``model.safetensors``).
    metrics : dict
        ``train_loss`` (list of ``(step, loss)``), ``final_train_loss``,
        ``mean_train_loss``, ``eval_loss`` and ``eval_loss_history`` (with eval rows),
        ``steps`` (optimizer steps in all), ``steps_this_run``, ``seconds`` (wall time
        of this run's training loop), ``seconds_per_step``, ``setup_seconds`` (loading
        and tokenizing), ``train_rows`` / ``train_rows_used``, ``world_size``,
        ``device``, peak memory, the DPO family's ``rewards/margins`` and
        ``rewards/accuracies`` histories where TRL logs them, and ``history`` (every
        other logged value as ``(step, value)`` lists).
    resumed_from : str or None
        The checkpoint this run resumed from.
    """

    output_dir: Path
    adapter: bool
    metrics: dict
    resumed_from: str | None
    #: What a model card says of this training (base model, data fingerprint, rows,
    #: hyperparameters, final metrics, method); filled by :class:`TRLTrainer`. Cards are written above the backends
    #: (:func:`lazyllm.cards.write_model_card`).
    card: dict = field(default_factory=dict)


def _sha256(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
