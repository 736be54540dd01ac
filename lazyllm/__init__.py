"""lazyllm: lazy frames for LLM data workflows.

Chain ``.generate()`` and relational operations (polars expressions) on a Frame,
inspect the plan with ``.explain()``, and run it with ``.collect()``: the planner
reuses LMDB-cached LLM results and runs the rest on the engine of each model spec.
"""

from lazyllm.core.catalog import DEFAULT_MODEL
from lazyllm.backends.distributed import RayExecutor
from lazyllm.planner.train import register_model_card_writer
from lazyllm.planner.workspace import Workspace

from . import errors
from . import prompts
from .frame import Frame, LLMPredicate, collect_all, concat, llm_predicate, sql
from .io import from_arrow, from_dicts, from_hf, from_pandas, from_polars, read_csv, read_ndjson, read_parquet
from .preferences import WinRate, best_of_n_pairs, kto_rows, win_rate
from .models import VLLM, ModelSpec, OpenAI, TestModel, Transformers, default_model
from .training import DPO, KTO, ORPO, SFT, LoRA, RewardModel, SimPO, TrainSpec
from .cards import write_model_card

register_model_card_writer(write_model_card)  # trainings the planner runs get a model card (cards live up here)

__version__ = "0.1.0"

__all__ = [
    "Frame", "collect_all", "concat", "llm_predicate", "LLMPredicate", "prompts", "sql",
    "read_parquet", "read_csv", "read_ndjson", "from_polars", "from_pandas", "from_arrow", "from_dicts", "from_hf",
    "ModelSpec", "Transformers", "OpenAI", "VLLM", "TestModel", "default_model", "DEFAULT_MODEL",
    "Workspace", "errors", "RayExecutor",
    "SFT", "DPO", "ORPO", "KTO", "SimPO", "RewardModel", "LoRA", "TrainSpec",
    "best_of_n_pairs", "kto_rows", "win_rate", "WinRate",
]
