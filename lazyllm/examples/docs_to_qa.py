"""The main job: questions and answers about Python standard-library functions.

Reads the docstrings of a fixed, sorted set of 64 standard-library functions (real
text present on every machine), asks the model for a question a programmer would
ask about each, answers it from the documentation, judges each answer against its
docstring (score 1-10, reference-guided MT-Bench prompt), keeps the answers scored
at or above a threshold, and builds a preference frame for DPO the way
self-rewarding language models do (two sampled answers per kept question, a
pairwise judgement in both orders, ``prompt``/``chosen``/``rejected`` columns).
Finally it fine-tunes the model with LoRA (SFT) on the kept pairs and answers a few
held-out questions with the trained adapter. Everything is written to parquet, with
data cards, and a DuckDB SQL summary of the kept data is printed. Run it with ``lazyllm demo`` or ``python -m lazyllm.examples.docs_to_qa``.

A second run is served from the workspace's cache in seconds (no model is loaded).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

import lazyllm

__all__ = ["FUNCTIONS", "load_docs", "build", "main", "DocsQA", "THRESHOLD"]

#: 64 standard-library functions, sorted by qualified name.
FUNCTIONS: tuple[str, ...] = tuple(sorted((
    "base64.b64encode", "bisect.bisect_left", "bisect.insort", "collections.namedtuple", "copy.deepcopy",
    "difflib.get_close_matches", "difflib.unified_diff", "fnmatch.fnmatch", "functools.cache",
    "functools.lru_cache", "functools.reduce", "functools.wraps", "glob.glob", "heapq.heappush",
    "heapq.merge", "heapq.nlargest", "html.escape", "inspect.getsource", "inspect.signature",
    "json.dump", "json.dumps", "json.loads", "math.comb", "math.fsum", "math.gcd", "math.isclose", "math.prod",
    "os.makedirs", "os.path.basename", "os.path.commonpath", "os.path.expanduser", "os.path.join",
    "os.path.normpath", "os.path.relpath", "os.path.splitext", "os.walk", "random.choice", "random.sample",
    "random.shuffle", "re.compile", "re.escape", "re.findall", "re.fullmatch", "re.split", "re.sub",
    "shlex.quote", "shlex.split", "shutil.copytree", "shutil.make_archive", "shutil.rmtree", "shutil.which",
    "statistics.mean", "statistics.median", "statistics.mode", "statistics.quantiles", "statistics.stdev",
    "string.capwords", "subprocess.check_output", "subprocess.run", "tempfile.mkdtemp", "textwrap.dedent",
    "textwrap.fill", "textwrap.shorten", "textwrap.wrap",
)))

QUESTION_SYSTEM = "You are an experienced Python developer."
QUESTION_PROMPT = (
    "Read this documentation of `{{ name }}`:\n\n{{ doc }}\n\n"
    'Write a question about `{{ name }}` that starts with "How" or "What".'
)
THRESHOLD = 7

SUMMARY_SQL = (
    "SELECT module, count(*) AS kept, round(avg(score), 2) AS mean_score, min(score) AS min_score "
    "FROM self GROUP BY module ORDER BY kept DESC, module"
)

ANSWER_PROMPT = (
    "Documentation of the Python function `{{ name }}`:\n\n{{ doc }}\n\n"
    "Question: {{ question }}\n\nAnswer the question in two or three sentences, using the documentation."
)


def _resolve(qualname: str) -> Any:
    parts = qualname.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(qualname)


def load_docs(limit: int = 64, max_chars: int = 700) -> pl.DataFrame:
    """The documentation table: columns ``name``, ``module``, ``doc`` (first ``max_chars`` characters)."""
    rows = []
    for name in FUNCTIONS[:limit]:
        doc = inspect.getdoc(_resolve(name)) or ""
        if len(doc) > max_chars:
            doc = doc[:max_chars].rsplit("\n", 1)[0].rstrip() + "\n..."
        rows.append({"name": name, "module": name.rsplit(".", 1)[0], "doc": doc})
    return pl.DataFrame(rows)


@dataclass(frozen=True)
class DocsQA:
    """The lazy frames of the main job (nothing has run)."""

    qa: lazyllm.Frame  # every function: question, answer, judge score
    kept: lazyllm.Frame  # answers scored >= the threshold
    preferences: lazyllm.Frame  # (prompt, chosen, rejected) pairs for DPO
    heldout: lazyllm.Frame | None  # held-out kept questions answered by the base and the LoRA-tuned model
    tuned: object  # the lazy trained-model handle (SFT with LoRA on the other kept pairs), or None

    def frames(self) -> dict[str, lazyllm.Frame]:
        out = {"qa": self.qa, "kept": self.kept, "preferences": self.preferences}
        if self.heldout is not None:
            out["heldout"] = self.heldout
        return out


def build(
    limit: int = 64,
    model: Any = None,
    question_tokens: int = 48,
    answer_tokens: int = 96,
    sample_tokens: int = 48,
    threshold: int = THRESHOLD,
    train_steps: int | None = 10,
) -> DocsQA:
    """The lazy plan: docs -> question -> answer -> judge -> filter, and preference pairs.

    Preference pairs follow Self-Rewarding Language Models (Yuan et al. 2024): two
    answers sampled with different seeds (``n=2``: sample 0 and 1), a pairwise judge
    of the same model in both orders, and the consistent winner as ``chosen``.
    """
    model = model or lazyllm.default_model()
    docs = lazyllm.from_polars(load_docs(limit), label="stdlib docstrings")
    qa = (
        docs.generate("question", model, system=QUESTION_SYSTEM, prompt=QUESTION_PROMPT,
                      max_tokens=question_tokens, stop=["\n"])
        .generate("answer", model, prompt=ANSWER_PROMPT, max_tokens=answer_tokens)
        .judge("score", model, question="question", answer="answer", reference="doc")
        .select("name", "module", "doc", "question", "answer", "score", "question_error", "answer_error", "score_error")
    )
    kept = qa.filter(pl.col("score") >= threshold)
    preferences = (
        kept.generate("samples", model, prompt=ANSWER_PROMPT, n=2, temperature=0.8, top_p=0.95, seed=1,
                      max_tokens=sample_tokens)
        .with_columns(answer_1=pl.col("samples").list.get(0), answer_2=pl.col("samples").list.get(1))
        .filter(pl.col("answer_1").is_not_null(), pl.col("answer_2").is_not_null(), pl.col("answer_1") != pl.col("answer_2"))
        .judge_pairwise("winner", model, a="answer_1", b="answer_2", question="question")
        .filter(pl.col("winner").is_in(["a", "b"]))
        .select(
            "name",
            pl.col("question").alias("prompt"),
            pl.when(pl.col("winner") == "a").then(pl.col("answer_1")).otherwise(pl.col("answer_2")).alias("chosen"),
            pl.when(pl.col("winner") == "a").then(pl.col("answer_2")).otherwise(pl.col("answer_1")).alias("rejected"),
        )
    )
    if model.provider not in ("transformers", "vllm"):  # fine-tuning runs transformers on the same weights
        return DocsQA(qa, kept, preferences, None, None)
    # fine-tune the model with LoRA on the kept pairs (question -> kept answer; short sequences keep it
    # quick on a CPU), then answer held-out kept questions with the trained adapter. Trained on first
    # use, cached by fingerprint: a rerun does not retrain.
    parts = kept.split({"train": 0.9, "heldout": 0.1}, seed=0)
    tuned = parts["train"].train(lazyllm.SFT(
        base=model, prompt="question", response="answer", lora=lazyllm.LoRA(r=8, alpha=16), epochs=1,
        max_steps=train_steps, batch_size=4, learning_rate=5e-4, max_length=192, seed=0,
    ))
    heldout = (
        parts["heldout"]
        .generate("tuned_answer", tuned, prompt="{{ question }}", max_tokens=answer_tokens)
        .select("name", "question", pl.col("answer").alias("base_answer"), "tuned_answer", "tuned_answer_error")
    )
    return DocsQA(qa, kept, preferences, heldout, tuned)


def main(argv: list[str] | None = None) -> dict[str, pl.DataFrame]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=64, help="number of functions (default 64)")
    parser.add_argument("--out", default="lazyllm_output", help="output folder for the parquet files")
    parser.add_argument("--workspace", default=None, help="workspace folder (default LAZYLLM_HOME or ./.lazyllm)")
    parser.add_argument("--threshold", type=int, default=THRESHOLD, help=f"keep scores >= this (default {THRESHOLD})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    job = build(args.limit, threshold=args.threshold)
    print("Plan of the preference pairs (before running):")
    print(job.preferences.explain(workspace=args.workspace))
    start = time.perf_counter()
    names = list(job.frames())
    results = dict(zip(names, lazyllm.collect_all(list(job.frames().values()), workspace=args.workspace,
                                                   progress=not args.quiet)))
    seconds = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results["qa"].write_parquet(out / "qa.parquet")
    if "heldout" in results:
        results["heldout"].write_parquet(out / "heldout.parquet")
    for name in ("kept", "preferences"):  # dataset folders: parquet shards + data card (README.md)
        job.frames()[name].save_dataset(out / name, data=results[name], workspace=args.workspace,
                                        title=f"Python stdlib QA ({name})", license="apache-2.0")
    qa, kept, prefs = results["qa"], results["kept"], results["preferences"]
    with pl.Config(tbl_rows=5, fmt_str_lengths=70, tbl_width_chars=170):
        print(kept.select("name", "question", "answer", "score").head(5))
        print(prefs.select("prompt", "chosen", "rejected").head(3))
    errors = qa.filter(pl.any_horizontal(pl.col("^.*_error$").is_not_null())).height
    print(f"{qa.height} questions answered ({errors} with errors), score distribution "
          f"{dict(sorted(qa['score'].value_counts().iter_rows()))}")
    print(f"{kept.height} kept with score >= {args.threshold}; {prefs.height} preference pairs")
    if "heldout" in results:
        with pl.Config(tbl_rows=6, fmt_str_lengths=90, tbl_width_chars=170):
            print("Held-out questions, base vs LoRA-tuned answers:")
            print(results["heldout"].select("question", "base_answer", "tuned_answer"))
    summary = job.kept.sql(SUMMARY_SQL).collect(workspace=args.workspace, progress=False)  # served from cache
    with pl.Config(tbl_rows=40, tbl_width_chars=120):
        print("DuckDB summary of the kept data:\n" + SUMMARY_SQL)
        print(summary)
    print(f"written to {out.resolve()}: qa.parquet, kept/ and preferences/ (parquet + data card) "
          f"in {seconds:.1f} s")
    results["summary"] = summary
    return results


if __name__ == "__main__":
    main()
