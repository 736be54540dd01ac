"""Training specs for ``Frame.train``: SFT, DPO, ORPO, KTO, SimPO and reward models.

Each spec is declarative (a frozen dataclass): the base model, which columns hold
the training fields, LoRA or full fine-tuning, and the hyperparameters. Training
runs with TRL and PEFT (``pip install -e '.[train]'``) when something needs the
trained model; see :mod:`lazyllm.planner.train`.

Methods and sources:

- SFT: supervised fine-tuning on prompt/response pairs or chat messages (TRL ``SFTTrainer``).
- DPO: Direct Preference Optimization (Rafailov et al. 2023), TRL ``DPOTrainer``.
- ORPO: Odds-Ratio Preference Optimization (Hong et al. 2024), TRL ``ORPOTrainer``.
- KTO: Kahneman-Tversky Optimization (Ethayarajh et al. 2024), TRL ``KTOTrainer``.
- SimPO: Simple Preference Optimization (Meng et al. 2024), TRL's CPO trainer with ``loss_type="simpo"``.
- RewardModel: a Bradley-Terry reward model (Ouyang et al. 2022), TRL ``RewardTrainer``.

PPO is no longer in TRL; lazyllm offers offline preference training (the DPO family)
and self-rewarding loops (generate -> judge_pairwise -> DPO -> generate) instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import polars as pl

from lazyllm.core.errors import ParameterError
from lazyllm.core.protocols import TRAINING_HYPERPARAMETERS, ModelSpec
from lazyllm.planner import executor as _executor
from lazyllm.planner.train import TrainedModel

from .models import Transformers, as_model_spec

__all__ = ["LoRA", "TrainSpec", "SFT", "DPO", "ORPO", "KTO", "SimPO", "RewardModel"]


@dataclass(frozen=True, slots=True)
class LoRA:
    """Low-rank adapter settings for PEFT (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
    Large Language Models"; the ``peft`` library's ``LoraConfig``).

    Parameters
    ----------
    r : int
        Rank of the update matrices (>= 1); trainable parameters grow linearly with it.
    alpha : int
        Scaling numerator: the update is scaled by ``alpha / r``.
    dropout : float
        Dropout on the adapter's input, in [0, 1).
    target_modules : tuple of str or str
        Module names to adapt, or ``"all-linear"`` (every linear layer but the output head).

    Raises
    ------
    PlanError
        ``r`` or ``alpha`` below 1, or ``dropout`` outside [0, 1).

    Examples
    --------
    >>> LoRA(r=8, alpha=16).r
    8
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | str = "all-linear"

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha < 1:
            raise ParameterError(f"LoRA needs r >= 1 and alpha >= 1, got r={self.r}, alpha={self.alpha}.")
        if not 0 <= self.dropout < 1:
            raise ParameterError(f"LoRA dropout must be in [0, 1), got {self.dropout}.")


def _perf(default: Any) -> Any:
    return field(default=default, metadata={"performance_only": True})


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """Common training options of the specs passed to :meth:`lazyllm.Frame.train`.

    ``frame.train(spec)`` returns a lazy trained-model handle (itself a model spec):
    nothing trains until a collect needs the model; the weights are kept in the
    workspace under the fingerprint of the training rows, the spec and the base, so a
    rerun does not retrain and an interrupted training resumes from its last checkpoint.
    Trained with TRL (``trl``) and PEFT (``peft``): install the ``train`` extra.

    Parameters
    ----------
    base : model spec or str
        The model to fine-tune (a transformers model; default the embedded SmolLM2). A
        :class:`~lazyllm.VLLM` spec trains its model with transformers (float32).
    lora : LoRA or None
        LoRA adapter settings; None for full fine-tuning.
    epochs : float
        Passes over the training rows (``max_steps`` overrides it when set).
    learning_rate : float
        Peak learning rate (linear decay).
    batch_size : int
        Rows per device per step; ``gradient_accumulation`` steps per optimizer update.
    max_length : int
        Tokens per example (longer ones are truncated).
    seed : int
        Seeds the data order, the validation split and the initialisation.
    validation : float, optional
        Fraction of rows held out for an eval loss.
    save_steps : int
        Checkpoint every N optimizer steps (an interrupted training resumes from the last one).
    devices : int or list of str, optional
        ``2`` or ``["cuda:0", "cuda:1"]``: several worker processes (FSDP on GPUs),
        launched by lazyllm. Performance only.

    Raises
    ------
    PlanError
        A base that is not a transformers model, ``epochs <= 0`` without
        ``max_steps``, ``batch_size``/``gradient_accumulation`` below 1,
        ``max_length`` below 8, or ``validation`` outside (0, 1). Raised when the spec
        is made, before anything trains.

    Notes
    -----
    Cost: ``ceil(rows * epochs / (batch_size * gradient_accumulation))`` optimizer
    steps (or ``max_steps``), each a forward and backward pass over ``batch_size``
    sequences of at most ``max_length`` tokens; no LLM calls. Measured here (CPU,
    LoRA r=8, SmolLM2-135M, 64 tokens): SFT about 1.2 s per step at batch 4.
    """

    method: ClassVar[str] = ""
    base: Any = None
    lora: LoRA | None = LoRA()
    epochs: float = 1.0
    max_steps: int | None = None
    learning_rate: float = 2e-4
    batch_size: int = 4
    gradient_accumulation: int = 1
    max_length: int = 512
    seed: int = 0
    validation: float | None = None
    save_steps: int = _perf(50)
    devices: Any = _perf(None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", as_model_spec(self.base))
        if getattr(self.base, "provider", None) == "vllm":  # trainers run transformers: same weights
            object.__setattr__(self, "base", Transformers(self.base.model, revision=self.base.revision))
        if not isinstance(self.base, ModelSpec) or self.base.provider != "transformers":
            raise ParameterError(f"{type(self).__name__}(base=...) must be a transformers model (an alias, folder or hub "
                            f"id, or a trained handle), got {self.base!r}.")
        if self.epochs <= 0 and not self.max_steps:
            raise ParameterError("epochs must be > 0 (or set max_steps).")
        if self.batch_size < 1 or self.gradient_accumulation < 1 or self.max_length < 8:
            raise ParameterError("batch_size and gradient_accumulation must be >= 1 and max_length >= 8.")
        if self.validation is not None and not 0 < self.validation < 1:
            raise ParameterError(f"validation must be a fraction in (0, 1), got {self.validation}.")

    def columns(self) -> dict[str, str]:
        """Standard field name -> frame column."""
        raise NotImplementedError

    def standardize(self, df: pl.DataFrame) -> list[dict[str, Any]]:
        """Training rows with standard field names (rows with a null field are dropped)."""
        mapping = self.columns()
        return df.select([pl.col(col).alias(std) for std, col in mapping.items()]).drop_nulls().to_dicts()

    def job_options(self) -> dict[str, Any]:
        """The hyperparameters the trainer's job takes
        (:data:`lazyllm.core.protocols.TRAINING_HYPERPARAMETERS`), as plain data."""
        options = {name: getattr(self, name, None) for name in TRAINING_HYPERPARAMETERS}
        if self.lora is not None:
            lora = dataclasses.asdict(self.lora)
            if isinstance(lora.get("target_modules"), tuple):
                lora["target_modules"] = list(lora["target_modules"])
            options["lora"] = lora
        return options


@dataclass(frozen=True, kw_only=True)
class SFT(TrainSpec):
    """Supervised fine-tuning (TRL's ``SFTTrainer``): next-token loss on the response tokens.

    Parameters
    ----------
    prompt, response : str
        Columns of the user turn and the answer (one training example per row; rows
        with a null in either are dropped).
    messages : str, optional
        Instead: a column of chat conversations (a list of ``{"role", "content"}``
        structs); the loss falls on the assistant turns.

    Other parameters (``base``, ``lora``, ``epochs``, ``max_steps``, ``learning_rate``,
    ``batch_size``, ``gradient_accumulation``, ``max_length``, ``seed``, ``validation``,
    ``save_steps``, ``devices``) are those of :class:`TrainSpec`.

    Raises
    ------
    PlanError
        Neither ``prompt``/``response`` nor ``messages`` (when the frame is trained),
        or a bad common option.

    Examples
    --------
    >>> import lazyllm
    >>> spec = SFT(prompt="question", response="answer", lora=LoRA(r=8), max_steps=10)
    >>> spec.columns()
    {'prompt': 'question', 'completion': 'answer'}
    """

    method: ClassVar[str] = "sft"
    prompt: str | None = "prompt"
    response: str | None = "response"
    messages: str | None = None

    def columns(self) -> dict[str, str]:
        if self.messages is not None:
            return {"messages": self.messages}
        if self.prompt is None or self.response is None:
            raise ParameterError("SFT needs prompt= and response= columns, or messages=.")
        return {"prompt": self.prompt, "completion": self.response}


@dataclass(frozen=True, kw_only=True)
class DPO(TrainSpec):
    """Direct Preference Optimization (Rafailov et al. 2023, "Direct Preference
    Optimization: Your Language Model is Secretly a Reward Model"; TRL's ``DPOTrainer``).

    Parameters
    ----------
    prompt, chosen, rejected : str
        Columns of the prompt and of the preferred and dispreferred answers (one pair
        per row; rows with a null are dropped).
    beta : float
        Strength of the implicit KL penalty against the reference model (the base, or
        the base without the adapter under LoRA).

    Other parameters (``base``, ``lora``, ``epochs``, ``max_steps``, ``learning_rate``,
    ``batch_size``, ``gradient_accumulation``, ``max_length``, ``seed``, ``validation``,
    ``save_steps``, ``devices``) are those of :class:`TrainSpec`.

    Examples
    --------
    >>> DPO(beta=0.1).columns()
    {'prompt': 'prompt', 'chosen': 'chosen', 'rejected': 'rejected'}
    """

    method: ClassVar[str] = "dpo"
    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    beta: float = 0.1

    def columns(self) -> dict[str, str]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


@dataclass(frozen=True, kw_only=True)
class ORPO(DPO):
    """Odds-Ratio Preference Optimization (Hong et al. 2024, "ORPO: Monolithic Preference
    Optimization without Reference Model"; TRL's ``ORPOTrainer``): SFT loss plus an
    odds-ratio term, no reference model. Columns as :class:`DPO`; ``beta`` weighs the
    odds-ratio term.

    Paper: Hong, Lee & Thorne 2024, arXiv:2403.07691. Library: ``trl.experimental.orpo``.

    Parameters
    ----------
    prompt, chosen, rejected : str
        Columns of the preference pairs (as :class:`DPO`).
    beta : float
        Weight of the odds-ratio term (default 0.1).

    Raises
    ------
    ParameterError
        As :class:`TrainSpec` (raised when the spec is made).

    Notes
    -----
    Cost: as :class:`DPO` without the reference model's forward pass (measured here:
    about 1.1 s per step at batch 2, LoRA r=8, SmolLM2-135M, 64 tokens).
    """

    method: ClassVar[str] = "orpo"


@dataclass(frozen=True, kw_only=True)
class SimPO(DPO):
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a
    Reference-Free Reward"): a length-normalised, reference-free preference loss, run as
    TRL's CPO trainer with ``loss_type="simpo"`` and no CPO (SFT) term. Columns as
:class:`DPO`; ``beta`` scales the reward (default 2.0, the paper's range).

    Paper: Meng, Xia & Chen 2024, arXiv:2405.14734. Library: ``trl.experimental.cpo``
    (``loss_type="simpo"``, ``cpo_alpha=0``).

    Parameters
    ----------
    prompt, chosen, rejected : str
        Columns of the preference pairs (as :class:`DPO`).
    beta : float
        Reward scale (default 2.0).

    Raises
    ------
    ParameterError
        As :class:`TrainSpec` (raised when the spec is made).

    Notes
    -----
    Cost: no reference model; measured here about 1.0 s per step at batch 2 (LoRA r=8,
    SmolLM2-135M, 64 tokens).
    """

    method: ClassVar[str] = "simpo"
    beta: float = 2.0


@dataclass(frozen=True, kw_only=True)
class KTO(TrainSpec):
    """Kahneman-Tversky Optimization (Ethayarajh et al. 2024, "KTO: Model Alignment as
    Prospect Theoretic Optimization"; TRL's ``KTOTrainer``) on unpaired feedback.

    Parameters
    ----------
    prompt, completion : str
        Columns of the prompt and of one answer.
    label : str
        A Boolean column: True when the answer is desirable
        (:func:`lazyllm.kto_rows` turns preference pairs into such rows).
    beta : float
        Strength of the implicit KL penalty.

    Other parameters (``base``, ``lora``, ``epochs``, ``max_steps``, ``learning_rate``,
    ``batch_size``, ``gradient_accumulation``, ``max_length``, ``seed``, ``validation``,
    ``save_steps``, ``devices``) are those of :class:`TrainSpec`.
    """

    method: ClassVar[str] = "kto"
    prompt: str = "prompt"
    completion: str = "completion"
    label: str = "label"
    beta: float = 0.1

    def columns(self) -> dict[str, str]:
        return {"prompt": self.prompt, "completion": self.completion, "label": self.label}


@dataclass(frozen=True, kw_only=True)
class RewardModel(TrainSpec):
    """A reward model: the base with a one-output sequence-classification head, trained
    on preference pairs with the Bradley-Terry loss (Ouyang et al. 2022, InstructGPT;
    TRL's ``RewardTrainer``). Score rows with it through :meth:`lazyllm.Frame.reward`.

    Parameters
    ----------
    chosen, rejected : str
        Columns of the preferred and dispreferred answers.
    prompt : str, optional
        Column of the prompt both answers reply to (shown as the user turn).

    Other parameters (``base``, ``lora``, ``epochs``, ``max_steps``, ``learning_rate``,
    ``batch_size``, ``gradient_accumulation``, ``max_length``, ``seed``, ``validation``,
    ``save_steps``, ``devices``) are those of :class:`TrainSpec`.
    """

    method: ClassVar[str] = "reward"
    chosen: str = "chosen"
    rejected: str = "rejected"
    prompt: str | None = None

    def columns(self) -> dict[str, str]:
        out = {"chosen": self.chosen, "rejected": self.rejected}
        if self.prompt is not None:
            out["prompt"] = self.prompt
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainedModelHandle(TrainedModel):
    """What :meth:`lazyllm.Frame.train` returns: a lazy trained model, usable as the model
    of a later ``generate``/``judge``/``reward`` (the planner trains it first, in the same
    collect), or trained now with :meth:`fit`. Its identity (fingerprint, cache keys) is
    the :class:`~lazyllm.planner.train.TrainedModel` spec's: training data subplan,
    training spec and base model."""

    def fit(self, *, workspace: Any = None, progress: bool | None = None) -> dict[str, Any]:
        """Train now (collecting the training data first) unless already trained.

        Parameters
        ----------
        workspace : str, path or Workspace, optional
            Where the cache and trained models live (default ``LAZYLLM_HOME`` or ``./.lazyllm``).
        progress : bool, optional
            Progress lines (default: on unless ``LAZYLLM_QUIET``).

        Returns
        -------
        dict
            The training metrics (final loss, steps, seconds per step, ...).

        Raises
        ------
        MissingDependencyError
            trl or peft is not installed (extra ``train``), before any LLM call.
        PlanError
            The training data has no usable rows.

        Notes
        -----
        Cost: the LLM work of the data subplan (cached like any collect) plus the
        training (none when a finished training of the same rows is in the workspace).
        """
        return _executor.fit(self, workspace=workspace, progress=progress)

    collect = fit
