"""TransformersEngine on the real embedded model (SmolLM2-135M-Instruct, CPU).

The alias is converted once per test session into a temporary workspace. Sampling
tests use float32: in bfloat16 on CPU, padding and batch size move the logits by up to
about 0.5, so seeded samples depend on the batch (see the module docstring of
lazyllm.backends.transformers); in float32 they move by about 1e-5.
"""

from __future__ import annotations

import fcntl
import gc
import json
import weakref
from pathlib import Path

import pytest
from engine_helpers import ask, run

from lazyllm.backends import transformers as engine_module
from lazyllm.core.system import file_lock
from lazyllm.core.catalog import ALIASES, DEFAULT_MODEL
from lazyllm.core.errors import EngineError, LazyLLMError, ModelNotFoundError
from lazyllm.core.protocols import Engine, Message, Request, SamplingParams
from lazyllm.backends.registry import engine_factory
from lazyllm.backends.transformers import TransformersEngine, resolve_model_dir
from lazyllm.models import Transformers

FRANCE = "What is the capital of France?"
COLORS = "Name three colors."
MATH = "What is 2 + 2?"
ESSAY = "Write a long essay about the history of the Roman Empire."


@pytest.fixture(scope="session")
def workspace(model_workspace) -> Path:
    return model_workspace.path  # shared with the other tests: the alias is converted once per session


@pytest.fixture(scope="session")
def converted(workspace) -> Path:
    return resolve_model_dir(Transformers(DEFAULT_MODEL), workspace)


@pytest.fixture(scope="session")
def engine(workspace, converted):
    # threads pinned: the process may hold another count from earlier tests (the trainer tests run
    # with 1), and at 1 thread float32 GEMM rounding follows the batch's padded shape closely
    # enough to flip a sampled token now and then (README, "Models"); these tests are about seeding
    eng = TransformersEngine(Transformers(DEFAULT_MODEL, dtype="float32", batch_size=4, num_threads=2),
                             workspace=workspace)
    yield eng
    eng.close()


# --------------------------------------------------------------------------- no model needed


def test_registry_returns_the_engine_and_construction_loads_nothing(tmp_path):
    assert engine_factory("transformers") is TransformersEngine
    eng = TransformersEngine(Transformers("no-such-org/no-such-model"), workspace=tmp_path)
    assert isinstance(eng, Engine)
    assert eng.model is None and eng.tokenizer is None
    assert list(eng.generate([])) == []  # nothing to do: nothing loaded, nothing raised
    assert eng.model is None


def test_unknown_hub_id_raises_model_not_found_with_the_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read at call time: nothing tries the network
    eng = TransformersEngine(Transformers("lazyllm-tests/no-such-model"), workspace=tmp_path)
    with pytest.raises(ModelNotFoundError) as info:
        next(iter(eng.generate([ask("hi")])))
    message = str(info.value)
    assert "could not be found locally nor downloaded" in message
    assert "'lazyllm-tests/no-such-model'" in message
    assert DEFAULT_MODEL in message and "local folder" in message and "HF_HUB_OFFLINE" in message
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, LazyLLMError)


def test_hub_id_is_downloaded_with_snapshot_download(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        folder = tmp_path / "snapshot"
        folder.mkdir(exist_ok=True)
        if "*.bin" in kwargs["allow_patterns"]:
            (folder / "pytorch_model.bin").write_bytes(b"")
        return str(folder)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    folder = resolve_model_dir(Transformers("org/model", revision="abc123"), tmp_path)
    assert folder == tmp_path / "snapshot"
    # safetensors first; this repo has none, so the PyTorch weights are fetched next
    assert [c[1]["allow_patterns"][-1] for c in calls] == ["*.safetensors", "*.bin"]
    assert all(c[0] == "org/model" and c[1]["revision"] == "abc123" for c in calls)
    assert all(c[1]["local_files_only"] is False for c in calls)
    assert all("*.json" in c[1]["allow_patterns"] for c in calls)

    calls.clear()
    resolve_model_dir(Transformers("org/model", gguf_file="model.Q4.gguf"), tmp_path)
    assert [c[1]["allow_patterns"][-1] for c in calls] == ["model.Q4.gguf"]


def test_missing_local_path_raises_model_not_found(tmp_path):
    spec = Transformers(str(tmp_path / "missing" / "model"))
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        resolve_model_dir(spec, tmp_path)


def test_folder_without_a_model_raises_engine_error(tmp_path):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    eng = TransformersEngine(Transformers(str(empty)), workspace=tmp_path)
    with pytest.raises(EngineError, match="could not load the model"):
        eng.load()


def test_conversion_lock_is_exclusive(tmp_path):
    lock = tmp_path / ".model.lock"
    with file_lock(lock):
        with open(lock, "a+") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock, "a+") as other:  # released
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


# --------------------------------------------------------------------------- real model


@pytest.mark.model
def test_alias_is_converted_once_into_an_hf_folder(workspace, converted, monkeypatch):
    source = ALIASES[DEFAULT_MODEL]
    assert converted == workspace / "models" / f"{DEFAULT_MODEL}-{source.version()}"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (converted / name).is_file(), name
    assert json.loads((converted / "config.json").read_text())["dtype"] == "float32"
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())
    provenance = json.loads((converted / ".lazyllm-source.json").read_text())
    assert provenance["package"] == source.package and provenance["hub_id"] == source.hub_id
    assert [p.name for p in converted.parent.iterdir() if ".tmp-" in p.name] == []
    assert converted.stat().st_mode & 0o777 == 0o755  # shareable, not mkdtemp's 0o700

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("the alias was converted again")

    monkeypatch.setattr(engine_module.AutoModelForCausalLM, "from_pretrained", no_second_conversion)
    assert resolve_model_dir(Transformers(DEFAULT_MODEL.upper()), workspace) == converted


@pytest.mark.model
def test_the_conversion_parses_the_gguf_file_once_and_gives_the_same_folder(tmp_path, converted, monkeypatch):
    """transformers reads the GGUF file for the tokenizer, the config and the weights; the
    conversion parses it once (and restores gguf's functions), and its folder is the one the
    session's conversion made, byte for byte."""
    import hashlib

    import gguf

    parses = []
    real_init = gguf.gguf_reader.GGUFReader.__init__

    def counted(self, path, *args, **kwargs):
        parses.append(str(path))
        real_init(self, path, *args, **kwargs)

    monkeypatch.setattr(gguf.gguf_reader.GGUFReader, "__init__", counted)
    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    folder = resolve_model_dir(Transformers(DEFAULT_MODEL), tmp_path)
    assert len(parses) == 1, parses
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_map)

    def digests(root):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.iterdir() if p.is_file()}

    assert digests(folder) == digests(converted)


@pytest.mark.model
def test_greedy_chat_answers_are_sensible(engine):
    out = run(engine, [ask(FRANCE, max_tokens=24), ask(COLORS, max_tokens=24), ask(MATH, max_tokens=24)])
    assert "Paris" in out[0].text
    assert any(color in out[1].text for color in ("Red", "Blue", "Green", "red", "blue", "green"))
    assert "4" in out[2].text
    for response in out.values():
        assert response.error is None and response.finish_reason == "stop"
        assert response.text == response.text.strip() and response.text
        assert 30 < response.input_tokens < 60  # the chat template adds a system prompt
        assert 1 <= response.output_tokens <= 24
    again = run(engine, [ask(FRANCE, max_tokens=24)])
    assert again[0] == out[0]  # greedy, and input_tokens does not count the padding


@pytest.mark.model
def test_raw_prompt_without_chat_template(engine):
    out = run(engine, [Request(prompt="The capital of France is", params=SamplingParams(max_tokens=8))])
    assert out[0].error is None and out[0].text
    assert out[0].input_tokens < 10  # no chat template, no system prompt


@pytest.mark.model
def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(engine):
    sampled = ask(FRANCE, temperature=0.8, seed=11, max_tokens=16)
    batch = [sampled, ask(ESSAY, temperature=0.8, seed=3, max_tokens=16), ask(COLORS, max_tokens=16)]
    first = run(engine, batch)
    assert run(engine, batch) == first
    alone = run(engine, [sampled])
    assert alone[0] == first[0]
    others = run(engine, [ask(MATH, temperature=1.0, seed=99, max_tokens=8), sampled])
    assert others[1] == first[0]
    assert first[0].text


@pytest.mark.model
def test_different_seeds_give_different_text(engine):
    questions = [FRANCE, COLORS, MATH]
    one = run(engine, [ask(q, temperature=0.8, seed=1, max_tokens=12) for q in questions])
    two = run(engine, [ask(q, temperature=0.8, seed=2, max_tokens=12) for q in questions])
    assert any(one[i].text != two[i].text for i in range(len(questions)))
    # the sample index changes the seed too
    first, second = (Request(messages=(Message("user", FRANCE),), sample_index=k,
                             params=SamplingParams(temperature=0.8, seed=1, max_tokens=12)) for k in (0, 1))
    samples = run(engine, [first, second])
    assert samples[0] == one[0] and samples[1].text != samples[0].text


@pytest.mark.model
def test_greedy_rows_are_unaffected_by_sampled_rows_in_their_batch(engine):
    greedy = ask(COLORS, max_tokens=16)
    alone = run(engine, [greedy])
    mixed = run(engine, [ask(ESSAY, temperature=0.9, seed=5, max_tokens=16), greedy])
    assert mixed[1] == alone[0]


@pytest.mark.model
def test_max_tokens_is_respected_per_row(engine):
    out = run(engine, [ask(ESSAY, max_tokens=5), ask(ESSAY, max_tokens=12), ask(ESSAY, temperature=0.8, max_tokens=3)])
    assert (out[0].output_tokens, out[0].finish_reason) == (5, "length")
    assert (out[1].output_tokens, out[1].finish_reason) == (12, "length")
    assert (out[2].output_tokens, out[2].finish_reason) == (3, "length")
    assert out[1].text.startswith(out[0].text)


@pytest.mark.model
def test_stop_strings_cut_the_text(engine):
    full = run(engine, [ask(ESSAY, max_tokens=24)])[0]
    words = full.text.split()
    stop = words[4]  # a word in the middle of the greedy answer
    cut = run(engine, [ask(ESSAY, max_tokens=24, stop=(stop, "never-appears")), ask(ESSAY, max_tokens=24)])
    assert cut[0].finish_reason == "stop"
    assert cut[0].text == full.text[: full.text.find(stop)].strip()
    assert stop not in cut[0].text
    assert 1 <= cut[0].output_tokens < full.output_tokens
    assert cut[1] == full  # the stop of one row does not end the other rows


@pytest.mark.model
def test_constrained_requests_are_decoded_under_their_constraint(engine):
    # details in tests/backends/test_constraints.py
    out = run(engine, [
        Request(messages=(Message("user", "Is the sky blue?"),), choices=("yes", "no"),
                params=SamplingParams(max_tokens=4)),
        ask(FRANCE, max_tokens=12),
        Request(prompt="Give JSON", json_schema='{"type":"object"}', params=SamplingParams(max_tokens=4)),
    ])
    assert out[0].text in ("yes", "no") and out[0].finish_reason == "stop"
    assert out[2].error is None and out[2].text.startswith("{") and out[2].output_tokens <= 4
    assert "Paris" in out[1].text


@pytest.mark.model
def test_a_failing_batch_yields_errors_and_the_next_batch_runs(workspace, converted, monkeypatch):
    eng = TransformersEngine(Transformers(DEFAULT_MODEL, dtype="float32", batch_size=1), workspace=workspace)
    eng.load()
    real_generate = eng.model.generate
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated out of memory")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(eng.model, "generate", flaky)
    # batches are sorted longest prompt first: the essay runs (and fails) first
    out = run(eng, [ask(FRANCE, max_tokens=8), ask(ESSAY, max_tokens=4)])
    assert out[1].finish_reason == "error" and out[1].text is None and "simulated out of memory" in out[1].error
    assert "Paris" in out[0].text
    eng.close()


@pytest.mark.model
def test_local_folder_loads_in_the_requested_dtype(workspace, converted):
    assert Transformers(str(converted)).dtype == "float32"  # the default
    spec = Transformers(str(converted), dtype="bfloat16")
    with TransformersEngine(spec, workspace=workspace) as eng:
        out = run(eng, [ask(FRANCE, max_tokens=12)])
        assert "Paris" in out[0].text
        assert str(eng.model.dtype) == "torch.bfloat16"
    assert eng.model is None


@pytest.mark.model
def test_close_frees_the_model_and_a_later_generate_reloads(workspace, converted):
    eng = TransformersEngine(Transformers(DEFAULT_MODEL, dtype="float32"), workspace=workspace)
    eng.load()
    model = weakref.ref(eng.model)
    eng.close()
    gc.collect()
    assert eng.model is None and eng.tokenizer is None
    assert model() is None
    eng.close()  # idempotent
    assert "Paris" in run(eng, [ask(FRANCE, max_tokens=12)])[0].text
    eng.close()


@pytest.mark.model
def test_choice_logprobs_match_full_sequence_probabilities(engine):
    """One prefill (+ the token "1") gives each score's probability; checked against
    separate forward passes of the prompt and of the prompt followed by "1"."""
    import math

    import torch

    scores = tuple(str(s) for s in range(1, 11))
    request = Request(messages=(Message("system", "Rate the answer from 1 to 10."),
                                Message("user", f"{MATH}\nAnswer: 4")), choices=scores, logprobs=True)
    response = run(engine, [request])[0]
    assert response.error is None and len(response.choice_logprobs) == 10
    probs = [math.exp(v) for v in response.choice_logprobs]
    assert response.text == scores[max(range(10), key=probs.__getitem__)]
    ids = engine._encode(request)
    one, zero = engine._choice_ids("1")[0], engine._choice_ids("0")[0]
    with torch.inference_mode():
        first = torch.log_softmax(engine.model(torch.tensor([ids])).logits[0, -1].float(), -1).exp()
        after_one = torch.log_softmax(engine.model(torch.tensor([ids + [one]])).logits[0, -1].float(), -1).exp()
    p10 = float(first[one] * after_one[zero])
    assert probs[9] == pytest.approx(p10, rel=1e-3)
    assert probs[0] == pytest.approx(float(first[one]) - p10, rel=1e-3)
    assert probs[1] == pytest.approx(float(first[engine._choice_ids("2")[0]]), rel=1e-3)
    assert 0 < sum(probs) <= 1 + 1e-6


@pytest.mark.model
def test_a_shared_system_prompt_is_computed_once_and_scores_stay_the_same(engine, monkeypatch):
    """Requests that share a long system turn are scored with its key/value cache computed once
    (prefix caching); the log-probabilities equal those of full, separate prefills (float rounding)."""
    import torch

    from lazyllm import prompts

    scores = tuple(str(s) for s in range(1, 11))
    answers = ["4", "5", "It is four.", "Twenty-two, since two plus two is twenty-two in base ten."]
    requests = [Request(messages=(Message("system", prompts.JUDGE_SYSTEM), Message("user", f"{MATH}\nAnswer: {a}")),
                        choices=scores, logprobs=True) for a in answers]
    prefix_lengths = []
    engine.load()
    forward = engine.model.forward

    def counting(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        prefix_lengths.append(tuple(ids.shape))
        return forward(*args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", counting)
    shared = run(engine, requests)
    assert prefix_lengths[0][0] == 1 and prefix_lengths[0][1] >= 50  # the system turn, once
    assert prefix_lengths[1][0] >= len(requests) and prefix_lengths[1][1] < 40  # suffixes only
    monkeypatch.setattr(engine, "MIN_SHARED_PREFIX", 10**9)  # the same requests without sharing
    separate = run(engine, requests)
    for i in range(len(requests)):
        assert shared[i].text == separate[i].text
        assert torch.allclose(torch.tensor(shared[i].choice_logprobs), torch.tensor(separate[i].choice_logprobs),
                              atol=1e-4)


def test_scored_sequences_run_sorted_by_length_in_groups_and_keep_their_order(engine, monkeypatch):
    """Scoring runs the suffixes shortest first, :attr:`SCORE_GROUP` at a time (each group
    padded only to its own longest), and every response is its own request's: the same
    log-probabilities as one group of all (float rounding)."""
    import torch

    from lazyllm import prompts

    scores = tuple(str(s) for s in range(1, 11))
    answers = ["Twenty-two, since two plus two is twenty-two in base ten, as everyone knows.", "4",
               "It is four.", "The answer is four, because two and two make four."]
    requests = [Request(messages=(Message("system", prompts.JUDGE_SYSTEM), Message("user", f"{MATH}\nAnswer: {a}")),
                        choices=scores, logprobs=True) for a in answers]
    engine.load()
    monkeypatch.setattr(engine, "SCORE_GROUP", 64)
    together = run(engine, requests)
    shapes = []
    forward = engine.model.forward

    def counting(*args, **kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", counting)
    monkeypatch.setattr(engine, "SCORE_GROUP", 2)
    grouped = run(engine, requests)
    assert [rows for rows, _ in shapes[1:]] == [2, 2]  # after the shared prefix: two groups of two
    assert shapes[1][1] < shapes[2][1]  # the short answers first, padded to their own longest
    for i in range(len(requests)):
        assert torch.allclose(torch.tensor(grouped[i].choice_logprobs), torch.tensor(together[i].choice_logprobs),
                              atol=1e-4)
    assert len({tuple(round(x, 2) for x in grouped[i].choice_logprobs) for i in range(len(requests))}) == len(requests)


# --------------------------------------------------------------------------- streaming session


def _drain(session, got):
    while True:
        part = session.poll()
        if not part:
            return got
        for ticket, response in part:
            assert ticket not in got, "every ticket is answered exactly once"
            got[ticket] = response


def test_a_session_refills_finished_rows_and_gives_the_batched_outputs(engine):
    """Rows of different lengths, greedy and seeded, stop strings and a constrained row: the
    refilling decoder gives generate()'s responses, and a request submitted while others
    decode joins them (it finishes before the long row that was running)."""
    requests = [ask(ESSAY, max_tokens=40), ask(FRANCE, max_tokens=12), ask(COLORS, max_tokens=16),
                ask(MATH, max_tokens=8), ask(FRANCE, max_tokens=16, temperature=0.8, seed=5),
                ask(ESSAY, max_tokens=24, stop=("the",)), ask("Tell me a joke.", max_tokens=10),
                ask("Is the sky blue?", choices=("yes", "no"), max_tokens=4)]
    batched = run(engine, requests)
    session = engine.session()
    assert session.continuous and session.capacity == 8
    tickets = session.submit(requests[:5])  # 4 slots: the fifth waits for a free one
    got: dict[int, object] = {}
    while len(got) < 2:
        got.update(session.poll())
    assert tickets[0] not in got  # the essay still decodes
    tickets += session.submit(requests[5:])
    order = []
    while True:
        part = session.poll()
        if not part:
            break
        order += [t for t, _ in part]
        got.update(part)
    assert sorted(got) == sorted(tickets)
    assert order.index(tickets[6]) < order.index(tickets[0])  # joined after, finished before the essay
    for i, ticket in enumerate(tickets):
        assert got[ticket] == batched[i], (i, got[ticket], batched[i])


def test_a_failing_step_fails_the_running_rows_and_the_session_goes_on(engine, monkeypatch):
    session = engine.session()
    session.submit([ask(FRANCE, max_tokens=8), ask(COLORS, max_tokens=8)])
    calls = {"n": 0}
    real = engine_module._RefillDecoder.step

    def broken(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return real(self)

    monkeypatch.setattr(engine_module._RefillDecoder, "step", broken)
    got = _drain(session, {})
    assert sorted(got) == [0, 1] and all(r.error and "boom" in r.error for r in got.values())
    later = session.submit([ask(FRANCE, max_tokens=8)])
    got = _drain(session, {})
    assert "Paris" in got[later[0]].text


def test_joining_rows_prefilled_in_groups_of_similar_length_give_the_batched_outputs(engine, monkeypatch):
    """Rows that join together are sorted by prompt length and prefilled a group at a time
    (here 2 rows per group), then merged into one left-padded cache: the responses are still
    generate()'s, each under its own ticket."""
    monkeypatch.setattr(engine_module._RefillDecoder, "PREFILL_GROUP", 2)
    prefills = []
    real = engine_module._RefillDecoder._prefill

    def counted(self, group):
        prefills.append(len(group))
        return real(self, group)

    monkeypatch.setattr(engine_module._RefillDecoder, "_prefill", counted)
    requests = [ask(ESSAY, max_tokens=12), ask("Hi.", max_tokens=6), ask(COLORS, max_tokens=10),
                ask(FRANCE, max_tokens=8, temperature=0.8, seed=3)]
    batched = run(engine, requests)
    session = engine.session()
    tickets = session.submit(requests)
    got = _drain(session, {})
    assert prefills[:2] == [2, 2]  # four joining rows: two groups
    for i, ticket in enumerate(tickets):
        assert got[ticket] == batched[i], (i, got[ticket], batched[i])


def test_the_growing_cache_layer_holds_what_concatenation_holds():
    """Appends, row selection and replacement of a :class:`_GrowingLayer` give the keys and
    values that transformers' concatenating ``DynamicLayer`` gives, across buffer growth."""
    import torch
    from transformers import DynamicLayer

    torch.manual_seed(0)
    plain = DynamicLayer()
    plain.update(torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4))
    grown = engine_module._GrowingLayer(plain)
    grown.ROOM = 2  # grow often
    grown_before = grown._keys
    for step in range(7):
        k, v = torch.randn(3, 2, 1 + step % 2, 4), torch.randn(3, 2, 1 + step % 2, 4)
        keys, values = grown.update(k, v)
        want = plain.update(k, v)
        assert torch.equal(keys, want[0]) and torch.equal(values, want[1])
        if step == 0:
            assert grown._keys is not grown_before and grown._keys.shape[-2] > keys.shape[-2]  # room to spare
    assert grown.get_seq_length() == plain.get_seq_length() == 15
    index = torch.tensor([2, 0])
    grown.batch_select_indices(index)
    plain.batch_select_indices(index)
    for layer in (grown, plain):  # as the decoder trims: keys first, then values
        layer.keys = layer.keys[..., 3:, :]
        layer.values = layer.values[..., 3:, :]
    k, v = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    keys, values = grown.update(k, v)
    want = plain.update(k, v)
    assert torch.equal(keys, want[0]) and torch.equal(values, want[1])


def test_only_layers_that_hold_keys_become_growing_layers():
    """A layer that holds nothing (a model whose layers share another's cache) is left as it is."""
    import torch
    from transformers import DynamicLayer

    held, empty = DynamicLayer(), DynamicLayer()
    held.update(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4))

    class Cache:
        layers = [held, empty]

    cache = engine_module._growing(Cache())
    assert type(cache.layers[0]) is engine_module._GrowingLayer and cache.layers[1] is empty
    assert engine_module._growing(cache).layers[0] is cache.layers[0]  # converted once


def test_a_session_whose_cache_grows_in_small_steps_gives_the_batched_outputs(engine, monkeypatch):
    """The running batch's cache grows many times (2 tokens of room), while rows finish (rows
    dropped, leading padding trimmed) and others join (caches merged): the responses are
    still generate()'s."""
    monkeypatch.setattr(engine_module._GrowingLayer, "ROOM", 2)
    grown = []
    real = engine_module._GrowingLayer.update

    def counted(self, key_states, value_states, *args, **kwargs):
        before = self._keys
        out = real(self, key_states, value_states, *args, **kwargs)
        grown.append(self._keys is not before)
        return out

    monkeypatch.setattr(engine_module._GrowingLayer, "update", counted)
    # the long prompt that starts first ends early (its leading padding is trimmed); a long prompt
    # joins rows whose cache is shorter (the merged cache is wider than the running one)
    requests = [ask(ESSAY, max_tokens=3), ask("Hi.", max_tokens=14), ask(COLORS, max_tokens=20),
                ask(ESSAY, max_tokens=12), ask(FRANCE, max_tokens=9, temperature=0.8, seed=3),
                ask(MATH, max_tokens=7)]
    batched = run(engine, requests)
    session = engine.session()
    tickets = session.submit(requests[:3])
    got: dict[int, object] = {}
    while len(got) < 1:
        got.update(session.poll())
    tickets += session.submit(requests[3:])
    got = _drain(session, got)
    assert any(grown) and not all(grown)  # grew, and also wrote in place
    for i, ticket in enumerate(tickets):
        assert got[ticket] == batched[i], (i, got[ticket], batched[i])
