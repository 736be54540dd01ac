"""The TRL + PEFT adapter: model loading, LoRA configuration, the TRL config and trainer
of each method, and metrics read back from the trainer's log history.

TRL renames arguments between releases; this module only passes names checked against
trl 1.16.0, peft 0.21.2, transformers 5.23.0 and accelerate 1.15.0 (``max_length``,
``processing_class``, ``use_cpu``, ``report_to``, ``eval_strategy``, ``fsdp=True`` with
``fsdp_config``). trl, peft, torch and transformers are imported inside the functions
(optional extra ``train``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

from lazyllm.core.errors import ModelNotFoundError, ParameterError
from lazyllm.core.system import package_version

from .progress import stderr_is_terminal
from .train_job import CHECKPOINTS_DIR, TrainJob

__all__ = ["check_extra"]


def _load_model(job: TrainJob, cuda: bool, distributed: bool, kwargs: dict[str, Any]) -> Any:
    import torch
    import transformers

    if job.method == "reward":
        cls = transformers.AutoModelForSequenceClassification
        kwargs["num_labels"] = 1
    else:
        cls = transformers.AutoModelForCausalLM
    # CPU: float32 (bf16 training on CPU is slow and inexact). One GPU: a LoRA base keeps
    # the checkpoint's dtype. Full fine-tuning and FSDP (which shards parameters of one
    # dtype): float32 master weights under bf16 autocast.
    kwargs.setdefault("dtype", "auto" if cuda and job.lora is not None and not distributed else torch.float32)
    try:
        return cls.from_pretrained(job.base_dir, **kwargs)
    except OSError as err:
        raise ModelNotFoundError(f"Could not load the base model from {str(job.base_dir)!r}: {err}. Pass a folder "
                                 "with config.json, tokenizer and safetensors weights.") from err


def _lora_config(job: TrainJob) -> Any:
    from peft import LoraConfig, TaskType

    opts = dict(job.lora or {})
    r = opts.pop("r", 8)
    alpha = opts.pop("alpha", opts.pop("lora_alpha", 2 * r))
    dropout = opts.pop("dropout", opts.pop("lora_dropout", 0.05))
    target = opts.pop("target_modules", None)
    if isinstance(target, tuple):
        target = list(target)
    task = TaskType.SEQ_CLS if job.method == "reward" else TaskType.CAUSAL_LM
    try:
        return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target,
                          task_type=opts.pop("task_type", task), bias=opts.pop("bias", "none"), **opts)
    except (TypeError, ValueError) as err:
        valid = ", ".join(["r", "alpha", "dropout", "target_modules"]
                          + sorted(f.name for f in dataclasses.fields(LoraConfig) if not f.name.startswith("_")))
        raise ParameterError(f"lora={job.lora!r} is not a valid LoRA configuration: {err}. Valid keys: {valid}.") from err


def _config_class(method: str) -> type:
    if method == "sft":
        from trl import SFTConfig as cls
    elif method == "dpo":
        from trl import DPOConfig as cls
    elif method == "kto":
        from trl import KTOConfig as cls
    elif method == "reward":
        from trl import RewardConfig as cls
    elif method == "orpo":
        from trl.experimental.orpo import ORPOConfig as cls
    else:  # simpo
        from trl.experimental.cpo import CPOConfig as cls
    return cls


def _config(job: TrainJob, plan: Any, extra: dict[str, Any], has_eval: bool) -> Any:
    import torch

    cls = _config_class(job.method)
    cuda = plan.accelerator == "cuda"
    bf16 = cuda and torch.cuda.is_bf16_supported()
    kwargs: dict[str, Any] = {
        "output_dir": str(job.output_dir / CHECKPOINTS_DIR),
        "num_train_epochs": float(job.epochs),
        "max_steps": job.max_steps if job.max_steps is not None else -1,
        "learning_rate": float(job.learning_rate),
        "per_device_train_batch_size": job.batch_size,
        "per_device_eval_batch_size": job.batch_size,
        "gradient_accumulation_steps": job.gradient_accumulation,
        "max_length": job.max_length,
        "seed": job.seed,
        "logging_strategy": "steps",
        "logging_steps": job.logging_steps,
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": job.save_steps,
        "save_total_limit": 2,
        "save_only_model": False,  # keep optimizer and RNG states: resume continues exactly
        "eval_strategy": "steps" if has_eval else "no",
        "report_to": "none",
        "use_cpu": not cuda,
        "bf16": bf16,
        "fp16": cuda and not bf16,
        # Small models on CPU: recomputation costs more than the memory it saves.
        "gradient_checkpointing": cuda and not plan.distributed,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": cuda,
        # tqdm's bars are noise in a log file: there a plain line per few seconds is printed instead
        "disable_tqdm": bool(os.environ.get("LAZYLLM_QUIET")) or not stderr_is_terminal(),
    }
    if has_eval:
        kwargs["eval_steps"] = job.save_steps
    if job.beta is not None:
        kwargs["beta"] = float(job.beta)
    if job.method == "simpo":
        kwargs["loss_type"] = "simpo"
        kwargs["cpo_alpha"] = 0.0
    if plan.distributed:
        kwargs["ddp_find_unused_parameters"] = False
        if cuda:
            kwargs["fsdp"] = True
            kwargs["fsdp_config"] = {
                "version": 2,
                "reshard_after_forward": True,  # full shard
                "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                "state_dict_type": "FULL_STATE_DICT",  # one HF-compatible file from rank 0
                "activation_checkpointing": False,
            }
        else:
            kwargs["ddp_backend"] = "gloo"
    check_extra(job.method, extra)
    kwargs.update(extra)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ParameterError(f"{cls.__name__} rejected the training settings: {err}. "
                        "Fix the job's fields or extra.") from err


def check_extra(method: str, extra: Mapping[str, Any]) -> None:
    """Check that ``extra`` only names fields of the method's TRL config.

    Raises
    ------
    PlanError
        Names the unknown fields and the config class (``model_init_kwargs`` is
        always accepted: it goes to ``from_pretrained``).
    """
    cls = _config_class(method)
    names = {f.name for f in dataclasses.fields(cls)} | {"model_init_kwargs"}
    unknown = sorted(set(extra) - names)
    if unknown:
        raise ParameterError(f"extra names {', '.join(repr(k) for k in unknown)}, which {cls.__name__} (trl "
                        f"{package_version('trl')}) does not have. Check the spelling against "
                        f"{cls.__module__}.{cls.__name__}; TRL renames arguments between releases "
                        "(e.g. max_seq_length is now max_length).")


def _trainer(method: str, model: Any, args: Any, train_ds: Any, eval_ds: Any, tokenizer: Any, peft_config: Any) -> Any:
    common = {"args": args, "train_dataset": train_ds, "eval_dataset": eval_ds, "processing_class": tokenizer,
              "peft_config": peft_config}
    if method == "sft":
        from trl import SFTTrainer

        return SFTTrainer(model=model, **common)
    if method == "dpo":
        from trl import DPOTrainer

        # ref_model=None: with LoRA the base with the adapter disabled is the reference;
        # in full fine-tuning TRL loads a frozen copy of the base.
        return DPOTrainer(model=model, ref_model=None, **common)
    if method == "kto":
        from trl import KTOTrainer

        return KTOTrainer(model=model, ref_model=None, **common)
    if method == "reward":
        from trl import RewardTrainer

        return RewardTrainer(model=model, **common)
    if method == "orpo":
        from trl.experimental.orpo import ORPOTrainer

        return ORPOTrainer(model=model, **common)
    from trl.experimental.cpo import CPOTrainer

    return CPOTrainer(model=model, **common)


def _metrics(log_history: list[dict[str, Any]], eval_metrics: Mapping[str, Any]) -> dict[str, Any]:
    history: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        if "train_runtime" in entry:
            continue  # the trainer's end-of-run summary, not a step
        step = int(entry.get("step", 0))
        for key, value in entry.items():
            if key in ("step", "epoch") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                history.setdefault(key, []).append((step, float(value)))
    losses = _dedupe(history.pop("loss", []))
    metrics: dict[str, Any] = {
        "train_loss": losses,
        "final_train_loss": losses[-1][1] if losses else None,
    }
    for key in ("rewards/margins", "rewards/accuracies"):
        if key in history:
            metrics[key] = _dedupe(history.pop(key))
    if "eval_loss" in eval_metrics or "eval_loss" in history:
        metrics["eval_loss_history"] = _dedupe(history.pop("eval_loss", []))
        final = eval_metrics.get("eval_loss")
        metrics["eval_loss"] = _finite(final) if final is not None else metrics["eval_loss_history"][-1][1]
        for key in ("eval_rewards/margins", "eval_rewards/accuracies"):
            if key in eval_metrics:
                metrics[key] = _finite(eval_metrics[key])
    metrics["history"] = {k: _dedupe(v) for k, v in sorted(history.items())}
    return metrics


def _dedupe(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """One value per step (the last logged: a resumed run re-logs nothing, an evaluate() may repeat)."""
    by_step: dict[int, float] = {}
    for step, value in points:
        by_step[step] = value
    return sorted(by_step.items())


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _tuples(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Histories as lists of ``(step, value)`` tuples (JSON stores them as lists)."""
    def convert(value: Any) -> Any:
        if isinstance(value, list) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
            return [(int(s), float(v)) for s, v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return {k: convert(v) for k, v in metrics.items()}
