"""The main-job comparison's job scripts (benchmarks/): same workload, same texts.

No timings here (benchmarks/run.py measures them); these tests check that the
hand-written script and lazyllm's transformers engine, given the same prompts and
greedy decoding, write the same questions, answers and scores, and that the
helpers that give DataDreamer equal settings do what they claim.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import benchmarks  # noqa: F401 - lazyllm from this checkout


class _DigitTokenizer:
    """A stand-in tokenizer: one token per character, token id = ord(char); eos = 0."""

    eos_token_id = 0

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]


class _Ids(list):
    def tolist(self) -> list[int]:
        return list(self)


def test_score_constraint_allows_exactly_the_integers_of_the_scale():
    from benchmarks._workload import ScoreConstraint

    allowed = ScoreConstraint(_DigitTokenizer(), 1, 10)
    prompt = [ord(c) for c in "assistant\n"]
    digits = sorted(ord(str(d)) for d in range(1, 10))
    assert allowed(0, _Ids(prompt)) == digits  # first token: 1..9
    assert allowed(0, _Ids([*prompt, ord("1")])) == sorted([0, ord("0")])  # "1" may become "10" or end
    assert allowed(0, _Ids([*prompt, ord("7")])) == [0]  # a complete score ends
    assert allowed(0, _Ids([*prompt, ord("1"), ord("0")])) == [0]
    assert allowed(0, _Ids([*prompt, ord("7"), 0, 0])) == [0]  # finished rows stay finished (padding)


def test_workload_spec_changes_only_the_judge_prompt_when_asked():
    from benchmarks import mainjob

    base, changed = mainjob.workload_spec(2), mainjob.workload_spec(2, changed=True)
    assert base["judge"]["prompt"] != changed["judge"]["prompt"]
    assert {k: v for k, v in base.items() if k != "judge"} == {k: v for k, v in changed.items() if k != "judge"}
    assert [base[s]["max_tokens"] for s in ("question", "answer", "judge")] == [48, 96, 4]


@pytest.fixture(scope="module")
def model_dir(model_workspace) -> Path:
    import lazyllm
    from lazyllm.core.model_store import resolve_model_dir

    return resolve_model_dir(lazyllm.Transformers(lazyllm.DEFAULT_MODEL), model_workspace.path)


@pytest.mark.model
def test_handwritten_script_and_lazyllm_write_the_same_texts(model_workspace, model_dir, tmp_path):
    """4 docstrings, short max tokens: equal questions, answers and scores (greedy, fp32)."""
    import torch

    import lazyllm
    from benchmarks import handwritten_job, lazyllm_job, mainjob

    spec = mainjob.workload_spec(4, threads=torch.get_num_threads())  # leave the session's thread count alone
    spec["question"]["max_tokens"], spec["answer"]["max_tokens"] = 16, 12
    ws = lazyllm.Workspace(tmp_path / "ws")
    ws.path.mkdir(parents=True)
    os.symlink(model_workspace.models_dir, ws.path / "models")  # the converted model, not the cache
    lazy = lazyllm_job.run_job({**spec, "lazyllm": {"workspace": str(ws.path), "engine": "transformers"}})
    hand = handwritten_job.run_job({**spec, "model_dir": str(model_dir)})

    assert [r["question"] for r in hand["rows"]] == [r["question"] for r in lazy["rows"]]
    assert all(r["question"] and "\n" not in r["question"] for r in hand["rows"])
    assert mainjob.differences(lazy, hand) == {"question": 0, "answer": 0, "score": 0, "kept": 0}
    assert all(1 <= r["score"] <= 10 for r in hand["rows"])  # the judge answers on the scale
    assert lazy["stages"] == hand["stages"] == {"question": 4, "answer": 4, "judge": 4}


@pytest.mark.model
def test_datadreamer_gets_the_model_and_the_prompts_of_the_others(model_dir, tmp_path, monkeypatch):
    """The copy for transformers 4.49 keeps rope_theta and the chat template; DataDreamer's
    chat prompt template gives the chat template's exact text (checked inside)."""
    from benchmarks import mainjob

    monkeypatch.setattr(mainjob, "WORK", tmp_path)
    copy = mainjob.datadreamer_model_dir(model_dir)
    config = json.loads((copy / "config.json").read_text())
    source = json.loads((model_dir / "config.json").read_text())
    assert config["rope_theta"] == source["rope_parameters"]["rope_theta"] == 100000.0
    tokenizer = json.loads((copy / "tokenizer_config.json").read_text())
    assert tokenizer["tokenizer_class"] == "PreTrainedTokenizerFast" and "<|im_start|>" in tokenizer["chat_template"]
    templates = mainjob.datadreamer_chat_templates(model_dir, mainjob.workload_spec(2))
    assert templates["answer"]["system_prompt"] is None  # the template's default system message is baked in
    assert "{{system_prompt}}" in templates["question"]["chat_prompt_template"]
