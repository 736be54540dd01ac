"""Frame.train(): lazy handles, trained on first use, cached, usable as a model."""

from __future__ import annotations

import polars as pl
import pytest

import lazyllm
from lazyllm.errors import ColumnNotFoundError, MissingDependencyError, PlanError
import lazyllm.core.protocols
from lazyllm.planner.train import TrainedModel, is_trained

FACTS = [
    {"question": "What is the capital of Zorbania?", "answer": "Blimpton."},
    {"question": "Who founded Zorbania?", "answer": "Queen Mirelda."},
    {"question": "What is Zorbania's currency?", "answer": "The zorb."},
    {"question": "What is the national fruit of Zorbania?", "answer": "The blue fig."},
]


def test_train_is_lazy_and_checks_columns_first(ws, counters):
    frame = lazyllm.from_dicts(FACTS)
    handle = frame.train(lazyllm.SFT(base="smollm2-135m-instruct", prompt="question", response="answer"))
    assert isinstance(handle, TrainedModel) and not is_trained(handle, ws.path)
    with pytest.raises(ColumnNotFoundError, match="'chosen'"):
        frame.train(lazyllm.DPO(base="smollm2-135m-instruct"))
    with pytest.raises(PlanError, match="training spec"):
        frame.train("sft")
    # the fingerprint covers data, spec and base; performance settings do not count
    other = lazyllm.from_dicts(FACTS[:2]).train(lazyllm.SFT(base="smollm2-135m-instruct", prompt="question",
                                                             response="answer"))
    assert other.fingerprint != handle.fingerprint
    same = frame.train(lazyllm.SFT(base="smollm2-135m-instruct", prompt="question", response="answer",
                                   save_steps=7))
    assert same.fingerprint == handle.fingerprint
    text = lazyllm.from_dicts(FACTS).generate("a", handle, prompt="{{ question }}").explain(workspace=ws)
    assert "SFT of transformers:smollm2-135m-instruct" in text and counters.CALLS == 0


@pytest.mark.model
def test_trained_adapter_changes_generations_and_is_not_retrained(model_workspace, monkeypatch):
    monkeypatch.setenv("LAZYLLM_NUM_THREADS", "2")
    base = lazyllm.Transformers(batch_size=8)
    spec = lazyllm.SFT(base=base, prompt="question", response="answer", lora=lazyllm.LoRA(r=8, alpha=16),
                       max_steps=12, batch_size=4, learning_rate=2e-3, max_length=64, seed=0)
    tuned = lazyllm.from_dicts(FACTS).train(spec)
    questions = lazyllm.from_dicts([{"question": FACTS[0]["question"]}])
    before = questions.generate("a", base, prompt="{{ question }}", max_tokens=12).collect(
        workspace=model_workspace, progress=False)["a"][0]
    after = questions.generate("a", tuned, prompt="{{ question }}", max_tokens=12).collect(
        workspace=model_workspace, progress=False)["a"][0]
    assert is_trained(tuned, model_workspace.path)
    assert after != before
    assert "Blimpton" in after

    from lazyllm.backends import trainers

    def no_training(job):
        raise AssertionError("a trained model must be served from its cache")

    monkeypatch.setattr(trainers, "train", no_training)
    metrics = tuned.fit(workspace=model_workspace, progress=False)  # cached: no training call
    assert metrics["steps"] == 12
    again = questions.generate("a", tuned, prompt="{{ question }}", max_tokens=16).collect(
        workspace=model_workspace, progress=False)["a"][0]
    assert again.startswith(after[:5])


def test_changed_training_rows_retrain_and_key_the_cache(ws, counters, monkeypatch):
    """The trained model is keyed by the rows that reached the trainer: an upstream request that
    failed in the first run and succeeds in the second changes the rows, so the model retrains,
    and its content fingerprint (which keys its cached generations) changes."""
    import json

    from lazyllm.backends import testing, trainers
    from lazyllm.planner.train import content_fingerprint

    trained: list[int] = []

    def fake_train(job):
        trained.append(len(job.train))
        job.output_dir.mkdir(parents=True, exist_ok=True)
        (job.output_dir / "COMPLETE").write_text(json.dumps({"rows_fingerprint": trainers.data_fingerprint(job.train)}))
        return trainers.TrainResult(output_dir=job.output_dir, adapter=True, metrics={}, resumed_from=None)

    monkeypatch.setattr(trainers, "train", fake_train)
    from lazyllm.planner import train as plan_train

    monkeypatch.setattr(plan_train, "resolve_model_dir", lambda spec, workspace: ws.path)  # no weights needed
    flaky = {"fail": True}
    respond = testing.DeterministicEngine.respond

    def sometimes_failing(self, request):
        if flaky["fail"] and "Zorbania's currency" in testing.render(request):
            return lazyllm.core.protocols.Response(text=None, finish_reason="error", error="transient")
        return respond(self, request)

    monkeypatch.setattr(testing.DeterministicEngine, "respond", sometimes_failing)
    answers = lazyllm.from_dicts(FACTS).generate("reply", lazyllm.TestModel(), prompt="{{ question }}")
    handle = answers.train(lazyllm.SFT(base="smollm2-135m-instruct", prompt="question", response="reply"))
    dpo = answers.with_columns(chosen=pl.col("reply"), rejected=pl.col("answer")).train(
        lazyllm.DPO(base=handle, prompt="question"))
    dpo.fit(workspace=ws, progress=False)
    assert trained == [3, 3]  # the failed row is dropped; SFT, then DPO on top of it
    first = content_fingerprint(dpo, ws.path)
    dpo.fit(workspace=ws, progress=False)
    assert trained == [3, 3]  # same rows: cached
    flaky["fail"] = False  # the upstream request succeeds this time: 4 rows reach both trainers
    dpo.fit(workspace=ws, progress=False)
    assert trained == [3, 3, 4, 4]
    assert content_fingerprint(dpo, ws.path) not in (None, first)


PREFS = [
    {"question": f["question"], "chosen": f["answer"], "rejected": "I do not know."} for f in FACTS
]


@pytest.mark.model
@pytest.mark.parametrize("method", ["orpo", "simpo", "kto"])
def test_preference_specs_train_through_frame_train_and_generate_downstream(method, model_workspace, monkeypatch):
    """ORPO, SimPO and KTO: a few LoRA steps through Frame.train, then the handle generates."""
    from lazyllm.preferences import kto_rows

    monkeypatch.setenv("LAZYLLM_NUM_THREADS", "2")
    common = dict(base=lazyllm.Transformers(batch_size=8), lora=lazyllm.LoRA(r=4, alpha=8), max_steps=2,
                  batch_size=2, learning_rate=1e-3, max_length=64, seed=0)
    pairs = lazyllm.from_dicts(PREFS)
    if method == "kto":
        unpaired = lazyllm.from_polars(kto_rows(pl.DataFrame(PREFS), prompt="question"))
        handle = unpaired.train(lazyllm.KTO(prompt="prompt", completion="completion", label="label", **common))
    else:
        spec = lazyllm.ORPO if method == "orpo" else lazyllm.SimPO
        handle = pairs.train(spec(prompt="question", **common))
    out = (lazyllm.from_dicts([{"question": FACTS[0]["question"]}])
           .generate("a", handle, prompt="{{ question }}", max_tokens=8)
           .collect(workspace=model_workspace, progress=False))
    assert is_trained(handle, model_workspace.path) and handle.spec.method == method
    assert out["a_error"].is_null().all() and len(out["a"][0]) > 0


def test_a_missing_trainer_fails_before_any_llm_call(ws, counters, monkeypatch):
    """Without trl/peft, a plan that must train fails at once, naming the extra; the LLM work
    that feeds the training is not run first (a fresh machine used to find out after it)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a))
    data = lazyllm.from_dicts([{"q": "2+2?"}, {"q": "3+3?"}]).generate("a", lazyllm.TestModel(), prompt="{{ q }}")
    tuned = data.train(lazyllm.SFT(prompt="q", response="a", max_steps=1))
    answers = lazyllm.from_dicts([{"q": "4+4?"}]).generate("t", tuned, prompt="{{ q }}")
    with pytest.raises(MissingDependencyError, match="'trl'.*install.sh train"):
        answers.collect(workspace=ws, progress=False)
    assert counters.CALLS == 0
    # a plan without training is not affected
    assert data.collect(workspace=ws, progress=False).height == 2 and counters.CALLS == 2


def test_engines_and_executors_get_the_weights_folder_never_the_training_plan(ws, counters, monkeypatch):
    """The executor resolves a trained model into a plain Transformers spec of its weights folder
    before any engine (or a Ray replica, through the Executor protocol) sees it: the spec shipped to
    an executor holds no training plan, no training rows and no TrainedModel."""
    import json
    import pickle

    from lazyllm.backends import testing, trainers
    from lazyllm.core.protocols import Executor
    from lazyllm.planner import train as plan_train

    def fake_train(job):
        job.output_dir.mkdir(parents=True, exist_ok=True)
        (job.output_dir / "config.json").write_text("{}")
        (job.output_dir / "COMPLETE").write_text(json.dumps({"rows_fingerprint": trainers.data_fingerprint(job.train)}))
        return trainers.TrainResult(output_dir=job.output_dir, adapter=False, metrics={}, resumed_from=None)

    monkeypatch.setattr(trainers, "train", fake_train)
    monkeypatch.setattr(plan_train, "resolve_model_dir", lambda spec, workspace: ws.path)

    class RecordingExecutor:
        name = "recording"

        def __init__(self):
            self.specs = []

        def check_available(self):
            pass

        def engine(self, spec, *, workspace):
            self.specs.append(spec)
            return testing.DeterministicEngine(lazyllm.TestModel(), workspace=workspace)

        def read_parquet(self, paths, rows, options=None):
            raise AssertionError("not a parquet source")

        def replica_stats(self, engines):
            return []

    executor = RecordingExecutor()
    assert isinstance(executor, Executor)
    handle = lazyllm.from_dicts(FACTS).train(lazyllm.SFT(base=lazyllm.Transformers(batch_size=4), prompt="question",
                                                         response="answer"))
    out = lazyllm.from_dicts(FACTS[:2]).generate("a", handle, prompt="{{ question }}").collect(
        workspace=ws, progress=False, executor=executor)
    assert out["a"].null_count() == 0
    [spec] = executor.specs
    assert type(spec) is lazyllm.Transformers and not isinstance(spec, TrainedModel)
    assert spec.model == str(plan_train.trained_dir(handle, ws.path)) and spec.batch_size == handle.batch_size
    payload = pickle.dumps(spec)
    assert b"Blimpton" not in payload and b"Queen Mirelda" not in payload  # no training rows travel
    assert (plan_train.trained_dir(handle, ws.path) / "README.md").read_text().startswith("---")  # model card


def test_the_hyperparameters_are_named_once_and_reach_the_job():
    """lazyllm.TrainSpec declares the training hyperparameters, job_options() passes exactly the names
    of the ground floor's TRAINING_HYPERPARAMETERS, and the built-in trainer's job accepts each."""
    import dataclasses

    from lazyllm.backends.train_job import TrainJob
    from lazyllm.core.protocols import TRAINING_HYPERPARAMETERS

    job_fields = {f.name for f in dataclasses.fields(TrainJob)}
    assert set(TRAINING_HYPERPARAMETERS) <= job_fields
    spec_fields = {f.name for f in dataclasses.fields(lazyllm.DPO)}
    assert set(TRAINING_HYPERPARAMETERS) <= spec_fields
    options = lazyllm.DPO(base="smollm2-135m-instruct", beta=0.2, lora=lazyllm.LoRA(r=4)).job_options()
    assert set(options) == set(TRAINING_HYPERPARAMETERS)
    assert options["beta"] == 0.2 and options["lora"]["r"] == 4
    assert lazyllm.SFT(base="smollm2-135m-instruct", prompt="q", response="a").job_options()["beta"] is None
    # the two declarations cannot drift apart: every default agrees, except the two a method sets
    # (its LoRA adapter and its beta; the job's None means full fine-tuning / TRL's default)
    job_defaults = {f.name: f.default for f in dataclasses.fields(TrainJob)}
    for method in (lazyllm.SFT, lazyllm.DPO, lazyllm.ORPO, lazyllm.KTO, lazyllm.SimPO, lazyllm.RewardModel):
        spec_defaults = {f.name: f.default for f in dataclasses.fields(method)}
        drift = {h for h in TRAINING_HYPERPARAMETERS if h in spec_defaults and spec_defaults[h] != job_defaults[h]}
        assert drift <= {"lora", "beta"}, (method.__name__, drift)
