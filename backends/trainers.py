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
import dataclasses
import functools
import gc
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lazyllm.core.errors import MissingDependencyError, ModelNotFoundError, ParameterError, PlanError
from lazyllm.core.system import env_threads, package_version
from lazyllm.backends.progress import stderr_is_terminal, training_progress_callback
from lazyllm.backends.launch import device_plan, launch
from lazyllm.core.errors import EngineError

__all__ = [
    "METHODS",
    "TrainJob",
    "TrainResult",
    "train",
    "completed",
    "latest_checkpoint",
    "data_fingerprint",
]

#: Training methods, in the order of the module docstring.
METHODS = ("sft", "dpo", "orpo", "kto", "simpo", "reward")
PREFERENCE_METHODS = ("dpo", "orpo", "kto", "simpo")

CHECKPOINTS_DIR = "checkpoints"
COMPLETE_FILE = "COMPLETE"
METRICS_FILE = "metrics.json"
JOB_FILE = "job.json"
_LOCK_FILE = ".train.lock"
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
# Job fields that change speed or bookkeeping only: left out of the job fingerprint.
_NOT_FINGERPRINTED = ("base_dir", "output_dir", "save_steps", "logging_steps", "devices")


# ------------------------------------------------------------------------------------
# Job and result
# ------------------------------------------------------------------------------------


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
    with _locked(job.output_dir / _LOCK_FILE):
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


def data_fingerprint(rows: Sequence[Mapping[str, Any]]) -> str:
    """Hex SHA-256 of rows (canonical JSON, key order ignored)."""
    return _sha256(list(rows))


def check_rows(method: str, rows: Sequence[Any], split: str = "train") -> None:
    """Check that every row has the fields of ``method``'s standardized format.

    Raises
    ------
    PlanError
        Names the first bad row, the missing or mistyped field and the format.
    """
    required = _ROW_KEYS[method]
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ParameterError(f"{split} row {i} is a {type(row).__name__}, not a dict. {method} rows look like "
                            f"{_ROW_FORMATS[method]}.")
        if method == "sft" and "messages" in row:
            messages = row["messages"]
            if not isinstance(messages, list) or not messages or not all(
                    isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in messages):
                raise ParameterError(f"{split} row {i}: 'messages' must be a non-empty list of "
                                "{'role': str, 'content': str} dicts. Fix the row or use prompt/completion.")
            continue
        missing = [k for k in required if row.get(k) is None]
        if missing:
            raise ParameterError(f"{split} row {i} lacks {', '.join(repr(k) for k in missing)} (it has "
                            f"{', '.join(repr(k) for k in row) or 'no fields'}). {method} rows look like "
                            f"{_ROW_FORMATS[method]}; rename or add the columns.")
        for k in (*required, "prompt", "system"):
            if k == "label" or row.get(k) is None:
                continue
            if not isinstance(row[k], str):
                raise ParameterError(f"{split} row {i}: {k!r} is a {type(row[k]).__name__}, not a string. "
                                f"{method} rows look like {_ROW_FORMATS[method]}.")
        if method == "kto" and not isinstance(row["label"], (bool, int)):
            raise ParameterError(f"{split} row {i}: 'label' is {row['label']!r}; it must be a bool "
                            "(True: desirable completion, False: undesirable).")


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


# ------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------


def _turns(row: Mapping[str, Any], prompt: str | None) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    if prompt is not None:
        turns.append({"role": "user", "content": prompt})
    return turns


def _said(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _text_prompt(row: Mapping[str, Any]) -> str:
    return f"{row['system']}\n\n{row['prompt']}" if row.get("system") else row["prompt"]


def standardize(method: str, row: Mapping[str, Any], chat: bool) -> dict[str, Any]:
    """One standardized row in the form the method's TRL trainer reads.

    With ``chat`` (the tokenizer has a chat template) prompts become user turns and
    completions assistant turns (TRL's conversational format); without, plain text.
    """
    if method == "sft":
        if "messages" in row:
            return {"messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]]}
        if chat:
            return {"prompt": _turns(row, row["prompt"]), "completion": _said(row["completion"])}
        return {"prompt": _text_prompt(row), "completion": row["completion"]}
    if method in ("dpo", "orpo", "simpo"):
        if chat:
            return {"prompt": _turns(row, row["prompt"]), "chosen": _said(row["chosen"]),
                    "rejected": _said(row["rejected"])}
        return {"prompt": _text_prompt(row), "chosen": row["chosen"], "rejected": row["rejected"]}
    if method == "kto":
        label = bool(row["label"])
        if chat:
            return {"prompt": _turns(row, row["prompt"]), "completion": _said(row["completion"]), "label": label}
        return {"prompt": _text_prompt(row), "completion": row["completion"], "label": label}
    # reward: conversational only with a prompt (a conversation needs a user turn)
    if chat and row.get("prompt") is not None:
        return {"prompt": _turns(row, row["prompt"]), "chosen": _said(row["chosen"]),
                "rejected": _said(row["rejected"])}
    if row.get("prompt") is not None:
        return {"prompt": _text_prompt(row), "chosen": row["chosen"], "rejected": row["rejected"]}
    return {"chosen": row["chosen"], "rejected": row["rejected"]}


def _dataset(method: str, rows: Sequence[Mapping[str, Any]], chat: bool) -> Any:
    from datasets import Dataset

    records = [standardize(method, row, chat) for row in rows]
    keys = {frozenset(r) for r in records}
    if len(keys) > 1:  # e.g. some SFT rows with messages, some with prompt/completion
        raise ParameterError(f"The {method} rows mix formats ({sorted(sorted(k) for k in keys)}). "
                        "Give every row the same fields.")
    return Dataset.from_list(records)


# ------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------


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


def _sha256(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``fcntl.flock`` on ``path`` (blocking) for the duration of the block."""
    import fcntl

    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
