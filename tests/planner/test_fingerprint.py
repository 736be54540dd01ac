"""Fingerprints are stable across processes and hash seeds, and change with meaning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import polars as pl
import pytest

import lazyllm
from lazyllm.core.hashing import FingerprintWarning, canonical

PLAN = textwrap.dedent(
    """
    import json, polars as pl, lazyllm
    docs = lazyllm.from_dicts([{"id": i, "doc": f"text {i}", "tags": {"a": i}} for i in range(5)])
    f = (docs.filter(pl.col("id") > 1)
             .with_columns(pl.col("doc").str.to_uppercase().alias("DOC"), n=pl.lit(3))
             .generate("q", lazyllm.Transformers("smollm2-135m-instruct", batch_size=4),
                       prompt="Ask about {{ DOC }} {{ tags.a }}", system="Be brief", temperature=0.7, seed=3,
                       stop=["\\n"])
             .sort("id", descending=True).head(2))
    print(json.dumps({"fp": f.fingerprint, "source": docs.fingerprint}))
    """
)


def _fingerprint_in_subprocess(hash_seed: str) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run([sys.executable, "-c", PLAN], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_fingerprint_stable_across_processes_and_hash_seeds():
    results = [_fingerprint_in_subprocess(seed) for seed in ("0", "1", "12345")]
    assert results[0] == results[1] == results[2]
    namespace: dict = {}
    exec(PLAN.replace("print(json.dumps(", "RESULT = (").replace("}))", "})"), namespace)  # and in this process
    assert namespace["RESULT"] == results[0]


def _base(prompt="Q: {{ x }}", model=None, temperature=0.0, data=None, max_tokens=32, batch_size=8):
    model = model or lazyllm.TestModel(batch_size=batch_size)
    src = lazyllm.from_dicts(data or [{"x": "a"}, {"x": "b"}])
    return src.generate("y", model, prompt=prompt, temperature=temperature, max_tokens=max_tokens)


def test_fingerprint_changes_with_prompt_params_model_and_upstream():
    base = _base().fingerprint
    assert _base().fingerprint == base
    assert _base(prompt="Q: {{ x }}!").fingerprint != base
    assert _base(temperature=0.5).fingerprint != base
    assert _base(max_tokens=33).fingerprint != base
    assert _base(model=lazyllm.TestModel(name="other")).fingerprint != base
    assert _base(data=[{"x": "a"}, {"x": "c"}]).fingerprint != base
    assert _base(model=lazyllm.Transformers()).fingerprint != _base(model=lazyllm.Transformers(dtype="bfloat16")).fingerprint


def test_performance_only_settings_do_not_change_fingerprints():
    assert _base(batch_size=2).fingerprint == _base(batch_size=64).fingerprint
    a = _base(model=lazyllm.Transformers(batch_size=2, num_threads=1, device="cpu")).fingerprint
    b = _base(model=lazyllm.Transformers(batch_size=64, device="cuda")).fingerprint
    assert a == b


def test_expression_fingerprints_follow_meaning():
    src = lazyllm.from_dicts([{"a": 1}])
    assert src.filter(pl.col("a") > 1).fingerprint == src.filter(pl.col("a") > 1).fingerprint
    assert src.filter(pl.col("a") > 1).fingerprint != src.filter(pl.col("a") > 2).fingerprint
    assert src.filter(pl.col("a") > 1).fingerprint != src.filter(pl.col("a") >= 1).fingerprint


def test_local_model_folder_fingerprint_is_content_based(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "config.json").write_text('{"x": 1}')
    b = tmp_path / "copy"
    b.mkdir()
    (b / "config.json").write_text('{"x": 1}')
    assert lazyllm.Transformers(str(a)).identity() == lazyllm.Transformers(str(b)).identity()
    c = tmp_path / "changed"
    c.mkdir()
    (c / "config.json").write_text('{"x": 2}')
    assert lazyllm.Transformers(str(a)).identity() != lazyllm.Transformers(str(c)).identity()


def test_unhashable_values_warn_and_never_collide():
    class Opaque:
        pass

    with pytest.warns(FingerprintWarning):
        first = canonical(Opaque())
    with pytest.warns(FingerprintWarning):
        second = canonical(Opaque())
    assert first != second
