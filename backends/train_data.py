"""Training rows: their formats per method, their checks, their fingerprint, and their
conversion into TRL's conversational datasets (see :mod:`lazyllm.backends.trainers` for
the formats)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lazyllm.core.errors import ParameterError

from .train_job import _ROW_FORMATS, _ROW_KEYS, _sha256

__all__ = ["data_fingerprint", "check_rows", "standardize"]


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
