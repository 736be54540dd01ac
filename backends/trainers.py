"""Trainers: SFT, DPO, ORPO, KTO, SimPO and reward models with TRL and PEFT (LoRA).

The training backend behind ``Frame.train()``. A :class:`TrainJob` names the method, a
local Hugging Face folder of the base causal LM, standardized rows and the
hyperparameters; :func:`train` runs it with the matching TRL trainer, in this process or
in worker processes it launches itself (FSDP on several GPUs, DDP over gloo on CPU), and
leaves in ``output_dir``:

- the LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``) or the full
  weights, with the tokenizer;
- ``checkpoints/checkpoint-<step>/`` every ``save_steps`` optimizer steps while it runs
  (an interrupted training resumes from the last complete one; removed once the
  training completes);
- ``metrics.json`` (loss history, eval loss, reward margins, seconds per step);
- ``README.md``, a model card (written by the planner with :func:`lazyllm.cards.write_model_card`);
- ``COMPLETE``, written last: a finished training is one whose ``COMPLETE`` exists
  (:func:`completed`), so a cache check can trust it.

Methods and their sources
-------------------------
==========  ========================================================================
method      trainer and paper
==========  ========================================================================
``sft``     supervised fine-tuning, TRL ``SFTTrainer`` (loss on the completion only)
``dpo``     Direct Preference Optimization, Rafailov et al. 2023 (arXiv:2305.18290),
            TRL ``DPOTrainer``; with LoRA the reference model is the base with the
            adapter disabled (``ref_model=None``)
``orpo``    Odds Ratio Preference Optimization, Hong et al. 2024 (arXiv:2403.07691),
            ``trl.experimental.orpo.ORPOTrainer`` (no reference model)
``kto``     Kahneman-Tversky Optimization, Ethayarajh et al. 2024 (arXiv:2402.01306),
            TRL ``KTOTrainer`` on unpaired rows labelled desirable / undesirable
``simpo``   Simple Preference Optimization, Meng et al. 2024 (arXiv:2405.14734): the
            CPO trainer (``trl.experimental.cpo``; CPO: Xu et al. 2024,
            arXiv:2401.08417) with ``loss_type="simpo"`` and ``cpo_alpha=0`` (pure
            SimPO, no behaviour-cloning term)
``reward``  a Bradley-Terry reward model (Ouyang et al. 2022, arXiv:2203.02155): TRL
            ``RewardTrainer`` on ``AutoModelForSequenceClassification`` with one label
==========  ========================================================================

There is no PPO: TRL 1.x removed ``PPOTrainer``. lazyllm offers offline preference
training instead (the DPO family above: DPO, ORPO, KTO, SimPO) on pairs a frame
generates and judges; iterating generate -> judge -> DPO in one lazy program gives
online-style ("self-rewarding", Yuan et al. 2024, arXiv:2401.10020) training without an
RL loop, and ``reward`` trains a scorer for best-of-n filtering.

Standardized rows
-----------------
- ``sft``: ``{"prompt": str, "completion": str}`` or ``{"messages": [{"role", "content"}, ...]}``
- ``dpo`` / ``orpo`` / ``simpo``: ``{"prompt": str, "chosen": str, "rejected": str}``
- ``kto``: ``{"prompt": str, "completion": str, "label": bool}``
- ``reward``: ``{"chosen": str, "rejected": str}``, optional ``"prompt"``

Any row may add ``"system": str``. When the tokenizer has a chat template, prompts
become user turns and completions assistant turns (TRL's conversational format), so a
trained model sees the same text as :mod:`lazyllm.backends.transformers` sends it.

Versions verified: trl 1.16.0, peft 0.21.2, transformers 5.23.0, accelerate 1.15.0,
torch 2.13.0 (CPU). TRL renames arguments between releases; this module only passes
names checked against those versions (``max_length``, ``processing_class``,
``use_cpu``, ``report_to``, ``eval_strategy``, ``fsdp=True`` with ``fsdp_config``).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lazyllm.core.errors import MissingDependencyError, ModelNotFoundError, PlanError
from lazyllm.core.system import env_threads, file_lock
from lazyllm.backends.progress import stderr_is_terminal, training_progress_callback
from lazyllm.backends.launch import device_plan, launch
from lazyllm.core.errors import EngineError

from .train_data import _dataset, check_rows, data_fingerprint, standardize
from .train_job import (CHECKPOINTS_DIR, COMPLETE_FILE, JOB_FILE, METHODS, METRICS_FILE, PREFERENCE_METHODS, TrainJob,
                        TrainResult, _FORMAT)
from .trl_adapter import _config, _finite, _load_model, _lora_config, _metrics, _trainer, _tuples, check_extra

__all__ = [
    "METHODS",
    "PREFERENCE_METHODS",
    "TrainJob",
    "TrainResult",
    "TRLTrainer",
    "train",
    "completed",
    "latest_checkpoint",
    "data_fingerprint",
    "check_rows",
    "check_extra",
    "standardize",
    "card_facts",
]


_LOCK_FILE = ".train.lock"



# ------------------------------------------------------------------------------------
# Public functions
# ------------------------------------------------------------------------------------


def train(job: TrainJob) -> TrainResult:
    """Run a training job to completion (or return it at once if it already completed).

    Parameters
    ----------
    job : TrainJob

    Returns
    -------
    TrainResult
        ``resumed_from`` names the checkpoint when an interrupted run was resumed.

    Raises
    ------
    PlanError
        A row lacks a field of the method's format, the rows leave nothing to train
        on, ``extra`` names a field the TRL config does not have, ``devices`` is not
        understood, or ``output_dir`` holds a training of another job.
    ModelNotFoundError
        ``base_dir`` is not a folder with a ``config.json``.
    MissingDependencyError
        ``trl`` or ``peft`` is not installed (extra ``train``).
    EngineError
        A worker process failed (multi-process runs).

    Notes
    -----
    Cost: no LLM calls; ``steps`` forward+backward passes of ``batch_size`` x
    ``gradient_accumulation`` rows (the DPO family runs chosen and rejected, and DPO /
    KTO a reference pass too). Measured on 2 shared CPU cores (one torch thread,
    SmolLM2-135M, LoRA r=8 on all linear layers, 64 tokens), seconds per optimizer step:
    SFT 1.2 (batch 4), full fine-tuning SFT 2.2 (batch 4, 3 GB peak), DPO 1.7, KTO 1.3,
    ORPO 1.1, SimPO 1.0, reward 0.8 (batch 2); peak memory about 1.7 GB with LoRA. Two
    CPU processes: 1.6 s per step (batch 2 each) plus about 6 s to start. Set
    ``LAZYLLM_NUM_THREADS=1`` on a busy machine: two threads per process on two busy
    cores made the same steps 15-25 times slower.

    Resume: checkpoints are written every ``save_steps`` optimizer steps into
    ``output_dir/checkpoints``; a rerun of the same job resumes from the last complete
    one (its ``trainer_state.json`` is written last). Two processes given the same
    ``output_dir`` take turns (a file lock); the second finds ``COMPLETE`` and returns.

    Several processes (``devices=2`` or a list): lazyllm launches the workers itself
    (:func:`lazyllm.backends.launch.launch`, PyTorch elastic, rendezvous on
    127.0.0.1). On GPUs the model is sharded with FSDP2 (transformers'
    ``fsdp=True``, ``fsdp_config={"version": 2, ...}``, full shard, transformer-layer
    auto wrap, bf16 mixed precision). On CPU, accelerate 1.15 only enables FSDP for GPU
    backends, so CPU workers train with DDP over gloo (the same launch, data sharding
    and rank-0 saving; the model is replicated, not sharded). Only rank 0 writes the
    final outputs. The CPU path is tested; the FSDP settings follow transformers 5.23's
    ``fsdp_config`` documentation but have not run on GPUs in lazyllm's tests yet.
    """
    _require_training_libraries()
    if not (job.base_dir / "config.json").is_file():
        raise ModelNotFoundError(
            f"The base model folder {str(job.base_dir)!r} has no config.json. Pass a local Hugging Face model "
            "folder (lazyllm.core.model_store.resolve_model_dir converts an alias or Hub id into one).")
    check_rows(job.method, job.train, "train")
    if job.eval is not None:
        check_rows(job.method, job.eval, "eval")
    check_extra(job.method, job.extra)
    plan = device_plan(job.devices)
    fingerprint = job.fingerprint()
    job.output_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(job.output_dir / _LOCK_FILE):
        done = completed(job.output_dir, fingerprint)
        if done is not None:
            return done
        _claim(job, fingerprint)
        if not plan.distributed:
            result = _run(job, plan, fingerprint)
        else:
            results = launch(_train_worker, (job, plan, fingerprint), nproc=plan.nproc,
                             cuda_visible=plan.cuda_visible, log_dir=job.output_dir / "logs",
                             threads_per_process=env_threads())
            result = results.get(0)
        if result is None:  # pragma: no cover - rank 0 always returns a result
            raise EngineError(f"The training in {job.output_dir} returned no result from rank 0. "
                              "Check the worker logs under output_dir/logs and rerun.")
        return result


def completed(output_dir: str | os.PathLike[str], fingerprint: str | None = None) -> TrainResult | None:
    """The result of a finished training in ``output_dir``, or None.

    Parameters
    ----------
    output_dir : path
        A training's output folder.
    fingerprint : str, optional
        :meth:`TrainJob.fingerprint` the training must have; None accepts any.

    Returns
    -------
    TrainResult or None
        None when ``COMPLETE`` is missing, unreadable or from another job.

    Notes
    -----
    Cost: reads two small JSON files; loads no model.
    """
    out = Path(output_dir)
    try:
        marker = json.loads((out / COMPLETE_FILE).read_text(encoding="utf-8"))
        metrics = json.loads((out / METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if fingerprint is not None and marker.get("job_fingerprint") != fingerprint:
        return None
    return TrainResult(output_dir=out, adapter=bool(marker.get("adapter")), metrics=_tuples(metrics),
                       resumed_from=None)


def latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint under ``output_dir/checkpoints``, or None.

    A checkpoint is complete when its ``trainer_state.json`` exists (transformers
    writes it after the weights, optimizer and RNG states), so a process killed while
    saving leaves a folder this function skips.
    """
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    found = []
    for d in root.glob("checkpoint-*"):
        step = d.name.rpartition("-")[2]
        if step.isdigit() and (d / "trainer_state.json").is_file():
            found.append((int(step), d))
    return max(found)[1] if found else None


# ------------------------------------------------------------------------------------
# No pickle is loaded from a workspace
# ------------------------------------------------------------------------------------

#: Files of a checkpoint that are pickles of Python objects rather than tensors
#: (transformers' ``TrainingArguments``); removed as soon as a checkpoint is saved.
PICKLED_FILES = ("training_args.bin",)


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within this block every ``torch.load`` runs with ``weights_only=True``.

    ``weights_only=True`` unpickles tensors, containers and primitive types only (a
    restricted unpickler), so a crafted checkpoint cannot run code. transformers
    already loads the optimizer, scheduler and RNG states of a checkpoint that way
    (``rng_state.pth`` holds NumPy's RNG state, allowed by its ``safe_globals``); this
    guard covers every other library a resume goes through (accelerate, PEFT, TRL).
    """
    import torch

    original = torch.load

    @functools.wraps(original)
    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = load  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = original  # type: ignore[assignment]


def _drop_pickles(output_dir: str | os.PathLike[str]) -> None:
    """Delete the pickled files of every checkpoint under ``output_dir``."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    for name in PICKLED_FILES:
        for path in root.glob(f"checkpoint-*/{name}"):
            path.unlink(missing_ok=True)


def _drop_pickles_on_save() -> Any:
    """A transformers callback that removes the pickled files of each checkpoint as it is saved."""
    import transformers

    class DropPicklesOnSave(transformers.TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                _drop_pickles(Path(args.output_dir).parent)  # args.output_dir is <output_dir>/checkpoints

    return DropPicklesOnSave()


# ------------------------------------------------------------------------------------
# The run (in this process or in each worker)
# ------------------------------------------------------------------------------------


def _train_worker(job: TrainJob, plan: Any, fingerprint: str) -> TrainResult | None:
    """Entry point of each worker process (multi-process runs); rank 0 returns the result."""
    try:
        return _run(job, plan, fingerprint)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _run(job: TrainJob, plan: Any, fingerprint: str) -> TrainResult | None:
    import torch

    threads = env_threads()
    before = torch.get_num_threads()
    if threads and not plan.distributed:  # workers get their count from the launcher
        torch.set_num_threads(threads)
    try:
        return _run_trainer(job, plan, fingerprint)
    finally:
        gc.collect()  # the trainer, model and optimizer states are garbage now
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _run_trainer(job: TrainJob, plan: Any, fingerprint: str) -> TrainResult | None:
    import torch
    import transformers

    start = time.perf_counter()
    cuda = plan.accelerator == "cuda"
    transformers.set_seed(job.seed)  # the reward head is initialised when the model loads
    tokenizer = transformers.AutoTokenizer.from_pretrained(job.base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    chat = bool(getattr(tokenizer, "chat_template", None))
    train_ds = _dataset(job.method, job.train, chat)
    eval_ds = _dataset(job.method, job.eval, chat) if job.eval is not None else None

    extra = dict(job.extra)
    model_kwargs = dict(extra.pop("model_init_kwargs", None) or {})
    model = _load_model(job, cuda, plan.distributed, model_kwargs)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = _config(job, plan, extra, eval_ds is not None)
    peft_config = _lora_config(job) if job.lora is not None else None
    trainer = _trainer(job.method, model, args, train_ds, eval_ds, tokenizer, peft_config)
    if not stderr_is_terminal():  # a log: lazyllm's plain lines instead of bars or raw log dicts
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
        if not os.environ.get("LAZYLLM_QUIET"):
            trainer.add_callback(training_progress_callback(job.method))
    rows_used = len(trainer.train_dataset)
    if rows_used == 0:
        raise PlanError(f"No training row is left after tokenization: all {len(job.train)} rows are longer than "
                        f"max_length={job.max_length} tokens (the reward trainer drops such rows). "
                        "Raise max_length or shorten the rows.")

    checkpoint = latest_checkpoint(job.output_dir)
    start_step = _checkpoint_step(checkpoint)
    _drop_pickles(job.output_dir)  # never loaded, but a shared workspace must not carry them
    trainer.add_callback(_drop_pickles_on_save())
    setup_seconds = time.perf_counter() - start
    t0 = time.perf_counter()
    with weights_only_loads():  # a checkpoint is data: resuming unpickles no object
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.perf_counter() - t0
    eval_metrics = trainer.evaluate() if eval_ds is not None else {}

    trainer.save_model(str(job.output_dir))  # collective under FSDP; rank 0 writes
    if not trainer.is_world_process_zero():
        return None
    steps = int(trainer.state.global_step)
    steps_this_run = max(0, steps - start_step)
    metrics = _metrics(trainer.state.log_history, eval_metrics)
    metrics.update({
        # over every logged step (a resumed run's own average covers only its steps)
        "mean_train_loss": (sum(v for _, v in metrics["train_loss"]) / len(metrics["train_loss"])
                            if metrics["train_loss"] else _finite(output.training_loss)),
        "steps": steps,
        "steps_this_run": steps_this_run,
        "epochs": _finite(trainer.state.epoch),
        "seconds": round(seconds, 3),
        "seconds_per_step": round(seconds / steps_this_run, 4) if steps_this_run else None,
        "setup_seconds": round(setup_seconds, 3),
        "train_rows": len(job.train),
        "train_rows_used": rows_used,
        "world_size": int(trainer.args.world_size),  # as the process group saw it
        "device": plan.accelerator,
    })
    metrics.update(_peak_memory(cuda, torch))
    adapter = peft_config is not None
    resumed_from = str(checkpoint) if checkpoint else None
    _finish(job, fingerprint, tokenizer, metrics, adapter, resumed_from)
    return TrainResult(output_dir=job.output_dir, adapter=adapter, metrics=_tuples(metrics), resumed_from=resumed_from)


# ------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------


def _finish(job: TrainJob, fingerprint: str, tokenizer: Any, metrics: dict[str, Any], adapter: bool,
            resumed_from: str | None) -> None:
    """Rank 0: tokenizer, metrics.json, README.md, then COMPLETE (last)."""
    out = job.output_dir
    tokenizer.save_pretrained(str(out))
    with contextlib.suppress(FileNotFoundError):
        (out / "training_args.bin").unlink()  # a pickle of the trainer's arguments; metrics.json says it all
    _atomic_write(out / METRICS_FILE, json.dumps(metrics, indent=2, sort_keys=True))
    summary = _summary(metrics)
    marker = {
        **summary,  # flat: final_train_loss, eval_loss, steps, seconds_per_step ...
        "format": _FORMAT,
        "job_fingerprint": fingerprint,
        "method": job.method,
        "adapter": adapter,
        "base_model": job.base_dir.name,
        "rows_fingerprint": data_fingerprint(job.train),
        "resumed_from": resumed_from,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _atomic_write(out / COMPLETE_FILE, json.dumps(marker, indent=2, sort_keys=True))
    # A finished training never resumes: drop the checkpoints (optimizer states are twice
    # the weights in full fine-tuning), keep the workspace small enough to hand over.
    shutil.rmtree(out / CHECKPOINTS_DIR, ignore_errors=True)


def _summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The final numbers of the metrics (no histories), for COMPLETE and the model card."""
    summary = {k: v for k, v in metrics.items()
               if v is not None and not isinstance(v, (list, dict)) and k not in ("device",)}
    for key in ("rewards/margins", "rewards/accuracies"):
        if metrics.get(key):
            summary[f"final_{key}"] = metrics[key][-1][1]
    return summary


def _hyperparameters(job: TrainJob) -> dict[str, Any]:
    hp: dict[str, Any] = {
        "method": job.method,
        "epochs": job.epochs,
        "max_steps": job.max_steps,
        "learning_rate": job.learning_rate,
        "batch_size": job.batch_size,
        "gradient_accumulation": job.gradient_accumulation,
        "max_length": job.max_length,
        "seed": job.seed,
        "world_size": job.world_size,
    }
    if job.beta is not None:
        hp["beta"] = job.beta
    if job.method == "simpo":
        hp["loss_type"] = "simpo"
    if job.lora is not None:
        for key, value in job.lora.items():
            hp[key if str(key).startswith("lora") else f"lora_{key}"] = value
    else:
        hp["fine_tuning"] = "full"
    hp.update({f"trl_{k}": v for k, v in job.extra.items()})
    return hp


def card_facts(job: TrainJob, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What a model card says of a finished training (:attr:`TrainResult.card`)."""
    data_fp = data_fingerprint(job.train)
    return {
        "base_model": str(job.base_dir),
        "data_fingerprint": data_fp,
        "hyperparameters": _hyperparameters(job),
        "metrics": _summary(metrics),
        "lineage": [{"kind": "training data", "rows": len(job.train), "fingerprint": data_fp}],
        "method": job.method.upper() if job.method != "simpo" else "SimPO",
    }


class TRLTrainer:
    """The TRL + PEFT trainer, as the planner finds it through the registry
    (:func:`lazyllm.backends.registry.trainer_factory`; implements
    :class:`lazyllm.core.protocols.Trainer`)."""

    name = "trl"

    def job(self, **fields: Any) -> TrainJob:
        """A :class:`TrainJob` (validated; raises :class:`PlanError` on bad fields)."""
        return TrainJob(**fields)

    def train(self, job: TrainJob) -> TrainResult:
        """:func:`train`, with :attr:`TrainResult.card` filled (:func:`card_facts`)."""
        result = train(job)
        result.card = card_facts(job, result.metrics)
        return result

    def data_fingerprint(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """:func:`data_fingerprint` of the rows that reach the trainer."""
        return data_fingerprint(rows)


def _claim(job: TrainJob, fingerprint: str) -> None:
    """Record which job owns ``output_dir``; refuse a folder that holds another job's training."""
    path = job.output_dir / JOB_FILE
    if path.exists():
        try:
            owner = json.loads(path.read_text(encoding="utf-8")).get("fingerprint")
        except (OSError, ValueError):
            owner = None
        if owner is not None and owner != fingerprint:
            raise PlanError(
                f"{str(job.output_dir)!r} holds checkpoints of a different training job (fingerprint "
                f"{owner[:12]}, this job {fingerprint[:12]}). Pass an empty output_dir, or delete the folder to "
                "start over.")
        if owner == fingerprint:
            return
    _atomic_write(path, json.dumps({"format": _FORMAT, "fingerprint": fingerprint, "method": job.method,
                                    "base_model": job.base_dir.name, "train_rows": len(job.train)}, indent=2))


# ------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------


def _require_training_libraries() -> None:
    for package in ("trl", "peft"):
        try:
            __import__(package)
        except ImportError as err:
            raise MissingDependencyError(package, "train", "Training (SFT, DPO, ORPO, KTO, SimPO, reward)") from err


def _checkpoint_step(checkpoint: Path | None) -> int:
    if checkpoint is None:
        return 0
    try:
        return int(json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError):
        return int(checkpoint.name.rpartition("-")[2])


def _peak_memory(cuda: bool, torch: Any) -> dict[str, float]:
    if cuda:
        return {"peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    import resource

    return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
