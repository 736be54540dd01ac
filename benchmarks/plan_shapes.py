"""Plan-shape suite: the requests each plan a user would write makes, optimized and not,
against the requests of the minimal plan (issue 15).

Every shape runs on the deterministic test engine (``lazyllm.TestModel``) in a fresh
workspace, so the counts are engine requests, not cache effects. The *minimal* column
is the requests of the cheapest plan a careful user would write by hand for the same
result (cheap filters, limits and selections first, unread LLM columns left out), run
with ``optimize=False``; "same rows" checks that the optimized result equals the
unoptimized one. Requests are counts, not timings, so they do not depend on the
machine; the machine is named anyway.

Run: ``python -m benchmarks.run shapes``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

ROWS = 200


@dataclass
class Shape:
    name: str
    code: str
    build: Callable[[], object]  # -> lazyllm.Frame
    minimal: Callable[[], object]  # the hand-written cheapest plan for the same rows
    why_not_minimal: str = ""  # when the optimized plan cannot reach the minimum, the reason


def cpu() -> str:
    """CPU model, the SIMD flags that matter for inference, cores."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and model in ("unknown CPU", "x86_64", ""):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model} · flags {' '.join(wanted) or 'n/a'} · {os.cpu_count()} cores"


def shapes() -> list[Shape]:
    import lazyllm
    from lazyllm.examples import docs_to_qa

    model = lazyllm.TestModel(name="shapes", rules=(("grade topic 1", "9"), ("grade", "3")))
    # keeps the topics ending in 0: 20 of 200 rows
    keep10 = lazyllm.llm_predicate(lazyllm.TestModel(name="keep", rules=(("0?", "yes"), ("Keep", "no"))),
                                   "Keep {{ topic }}?")
    long_prompt = "Read the topic and decide carefully whether it is worth a question at all: " * 6 + "{{ topic }}"
    keep_all_costly = lazyllm.llm_predicate(lazyllm.TestModel(name="costly", rules=(("", "yes"),)), long_prompt)
    keep_cheap = lazyllm.llm_predicate(lazyllm.TestModel(name="cheap", rules=(("topic 1", "yes"), ("", "no"))),
                                       "{{ topic }}?")

    judge_costly = lazyllm.TestModel(name="costly-judge", rules=(("", "8"),))
    judge_cheap = lazyllm.TestModel(name="cheap-judge", rules=(("topic 1", "9"), ("", "2")))

    def judged(f, column, m, prompt):
        return f.judge(column, m, prompt=prompt).filter(pl.col(column) >= 5)

    def src(n: int = ROWS):
        return lazyllm.from_dicts([{"id": i, "topic": f"topic {i}", "len": (i * 37) % 100, "grp": i % 10}
                                   for i in range(n)])

    def gen(f):
        return f.generate("q", model, prompt="Ask about {{ topic }}")

    def gen2(f):
        return gen(f).generate("a", model, prompt="Answer {{ q }}")

    q_len = pl.col("q").str.len_chars()
    labels = lazyllm.from_dicts([{"id": i, "label": f"l{i % 4}"} for i in range(ROWS)])
    wanted = lazyllm.from_dicts([{"id": i} for i in (3, 50, 77, 120, 199)])
    other = lazyllm.from_dicts([{"id": 1000 + i, "topic": f"other {i}", "len": i % 100, "grp": i % 10}
                                for i in range(ROWS)])

    job = docs_to_qa.build(limit=64, model=lazyllm.TestModel(name="mainjob", rules=(("[Question]", "8"),)))
    docs = docs_to_qa.load_docs(64)
    modules = docs["module"].unique().sort().to_list()[:4]

    def hand_questions(head: int):  # questions for the first docstrings only
        m = lazyllm.TestModel(name="mainjob", rules=(("[Question]", "8"),))
        d = lazyllm.from_polars(docs_to_qa.load_docs(64), label="stdlib docstrings").head(head)
        return d.generate("question", m, system=docs_to_qa.QUESTION_SYSTEM, prompt=docs_to_qa.QUESTION_PROMPT,
                          max_tokens=48, stop=["\n"]).select("name", "question")

    def hand_job(head: int | None):
        m = lazyllm.TestModel(name="mainjob", rules=(("[Question]", "8"),))
        d = lazyllm.from_polars(docs_to_qa.load_docs(64), label="stdlib docstrings").filter(
            pl.col("module").is_in(modules))
        qa = (d.generate("question", m, system=docs_to_qa.QUESTION_SYSTEM, prompt=docs_to_qa.QUESTION_PROMPT,
                         max_tokens=48, stop=["\n"])
              .generate("answer", m, prompt=docs_to_qa.ANSWER_PROMPT, max_tokens=96)
              .judge("score", m, question="question", answer="answer", reference="doc")
              .select("name", "module", "doc", "question", "answer", "score", "question_error", "answer_error",
                      "score_error"))
        kept = qa.filter(pl.col("score") >= docs_to_qa.THRESHOLD)
        return kept.head(head) if head is not None else kept

    return [
        Shape("stacked filters: LLM output, then input column",
              'gen.filter(q_len > 0).filter(grp == 0)',
              lambda: gen(src()).filter(q_len > 0).filter(pl.col("grp") == 0),
              lambda: gen(src().filter(pl.col("grp") == 0)).filter(q_len > 0)),
        Shape("one conjunction", 'gen.filter((q_len > 0) & (grp == 0))',
              lambda: gen(src()).filter((q_len > 0) & (pl.col("grp") == 0)),
              lambda: gen(src().filter(pl.col("grp") == 0)).filter(q_len > 0)),
        Shape("filter on a derived input column", 'gen.with_columns(big=len >= 90).filter(big)',
              lambda: gen(src()).with_columns(big=pl.col("len") >= 90).filter(pl.col("big")),
              lambda: gen(src().with_columns(big=pl.col("len") >= 90).filter(pl.col("big"))).select(
                  "id", "topic", "len", "grp", "q", "q_error", "big")),
        Shape("sort by an input column, head", 'gen.sort("len").head(5)',
              lambda: gen(src()).sort("len").head(5),
              lambda: gen(src().sort("len").head(5))),
        Shape("LLM column dropped at the root", 'gen.drop("q", "q_error")',
              lambda: gen(src()).drop("q", "q_error"), lambda: src()),
        Shape("predicate over all rows, then head", 'gen.filter(q_len >= q_len.median()).head(3)',
              lambda: gen(src()).filter(q_len >= q_len.median()).head(3),
              lambda: gen(src()).filter(q_len >= q_len.median()).head(3)),
        Shape("input filter above one generate", 'gen.filter(grp == 0)',
              lambda: gen(src()).filter(pl.col("grp") == 0), lambda: gen(src().filter(pl.col("grp") == 0))),
        Shape("input filter above two generates", 'gen2.filter(grp == 0)',
              lambda: gen2(src()).filter(pl.col("grp") == 0), lambda: gen2(src().filter(pl.col("grp") == 0))),
        Shape("head above two generates", 'gen2.head(10)',
              lambda: gen2(src()).head(10), lambda: gen2(src().head(10))),
        Shape("select of input columns only", 'gen.select("id", "topic")',
              lambda: gen(src()).select("id", "topic"), lambda: src().select("id", "topic")),
        Shape("filter on a renamed input column", 'gen.rename({"grp": "group"}).filter(group == 0)',
              lambda: gen(src()).rename({"grp": "group"}).filter(pl.col("group") == 0),
              lambda: gen(src().filter(pl.col("grp") == 0)).rename({"grp": "group"})),
        Shape("SQL WHERE on an input column", 'gen.sql("SELECT id, q FROM self WHERE grp = 0 ORDER BY id")',
              lambda: gen(src()).sql("SELECT id, q FROM self WHERE grp = 0 ORDER BY id"),
              lambda: gen(src().filter(pl.col("grp") == 0)).sql("SELECT id, q FROM self ORDER BY id")),
        Shape("SQL reading no LLM column", 'gen.sql("SELECT id, topic FROM self ORDER BY id")',
              lambda: gen(src()).sql("SELECT id, topic FROM self ORDER BY id"),
              lambda: src().sql("SELECT id, topic FROM self ORDER BY id")),
        Shape("concat, then input filter", 'gen(a).concat(gen(b)).filter(grp == 0)',
              lambda: gen(src()).concat(gen(other)).filter(pl.col("grp") == 0),
              lambda: gen(src().filter(pl.col("grp") == 0)).concat(gen(other.filter(pl.col("grp") == 0)))),
        Shape("join, then filter on the left side", 'gen.join(labels, on="id").filter(grp == 0)',
              lambda: gen(src()).join(labels, on="id").filter(pl.col("grp") == 0),
              lambda: gen(src().filter(pl.col("grp") == 0)).join(labels, on="id")),
        Shape("unique on an input key", 'gen.unique(subset=["grp"])',
              lambda: gen(src()).unique(subset=["grp"]), lambda: gen(src().unique(subset=["grp"]))),
        Shape("semi join with 5 wanted ids", 'gen.join(wanted, on="id", how="semi")',
              lambda: gen(src()).join(wanted, on="id", how="semi"),
              lambda: gen(src().join(wanted, on="id", how="semi"))),
        Shape("sample of 10 rows", 'gen.sample(10, seed=0)',
              lambda: gen(src()).sample(10, seed=0), lambda: gen(src().sample(10, seed=0))),
        Shape("LLM filter on an input column above a generate", 'gen.filter(llm_predicate("Keep {{ topic }}?"))',
              lambda: gen(src()).filter(keep10), lambda: gen(src().filter(keep10))),
        Shape("two LLM filters, costly one first", 'src.filter(costly).filter(cheap)',
              lambda: src().filter(keep_all_costly).filter(keep_cheap),
              lambda: src().filter(keep_cheap).filter(keep_all_costly)),
        Shape("LLM filter, generate, head (waves)", 'src.filter(keep).generate(...).head(5)',
              lambda: gen(src().filter(keep10)).head(5), lambda: gen(src().head(41).filter(keep10).head(5)),
              why_not_minimal="the minimum (judge rows 0..40, where the 5th row passes) is known only in "
              "hindsight; waves size each next wave from the pass rate so far (remaining / rate x 1.2, at least 8 "
              "rows), so the last wave overshoots (5 + 25 + 25 rows judged)"),
        Shape("judge then score filter on an input-filtered frame", 'gen.judge(...).filter(score >= 7).filter(grp == 1)',
              lambda: gen(src()).judge("score", model, prompt="grade {{ topic }}: {{ q }}").filter(
                  pl.col("score") >= 7).filter(pl.col("grp") == 1),
              lambda: gen(src().filter(pl.col("grp") == 1)).judge("score", model, prompt="grade {{ topic }}: {{ q }}")
              .filter(pl.col("score") >= 7)),
        Shape("two judge filters, costly one first", 'src.judge(costly).filter(s1 >= 5).judge(cheap).filter(s2 >= 5)',
              lambda: judged(judged(src(), "s1", judge_costly, long_prompt), "s2", judge_cheap, "{{ topic }}"),
              lambda: judged(judged(src(), "s2", judge_cheap, "{{ topic }}"), "s1", judge_costly, long_prompt)
              .select("id", "topic", "len", "grp", "s1", "s1_error", "s2", "s2_error")),
        Shape("judge filter on an input column above a generate", 'gen.judge("{{ topic }}").filter(s >= 5)',
              lambda: judged(gen(src()), "s", judge_cheap, "{{ topic }}"),
              lambda: gen(judged(src(), "s", judge_cheap, "{{ topic }}"))
              .select("id", "topic", "len", "grp", "q", "q_error", "s", "s_error")),
        Shape("main job: kept.filter(module in 4).head(8)", 'job.kept.filter(module.is_in(...)).head(8)',
              lambda: job.kept.filter(pl.col("module").is_in(modules)).head(8), lambda: hand_job(8)),
        Shape("main job: kept.filter(module in 4)", 'job.kept.filter(module.is_in(...))',
              lambda: job.kept.filter(pl.col("module").is_in(modules)), lambda: hand_job(None)),
        Shape("main job: qa.select(name, question).head(8)", 'job.qa.select("name", "question").head(8)',
              lambda: job.qa.select("name", "question").head(8), lambda: hand_questions(8)),
    ]


def count(frame, optimize: bool) -> tuple[int, pl.DataFrame]:
    from lazyllm.backends import testing

    with tempfile.TemporaryDirectory() as ws:
        testing.reset_counters()
        df = frame.collect(workspace=ws, optimize=optimize, progress=False)
        return testing.CALLS, df


def bench_shapes(args: argparse.Namespace) -> None:
    from .run import write_section

    rows = ["| # | plan shape | code | minimal | optimized | unoptimized | at minimum | same rows |",
            "|---|---|---|---|---|---|---|---|"]
    misses = []
    for i, shape in enumerate(shapes(), 1):
        frame = shape.build()
        opt, fast = count(frame, True)
        plain, slow = count(frame, False)
        minimal, _ = count(shape.minimal(), False)
        same = fast.equals(slow)
        at_min = "yes" if opt <= minimal else "no"
        if opt > minimal:
            misses.append(f"#{i} {shape.name}: {shape.why_not_minimal or 'not explained yet'}")
        rows.append(f"| {i} | {shape.name} | `{shape.code}` | {minimal} | {opt} | {plain} | {at_min} | "
                    f"{'yes' if same else 'NO'} |")
    body = "\n".join(rows)
    body += (f"\n\nMachine: {cpu()}. Engine requests of the deterministic test engine ({ROWS}-row frames; the main "
             "job on 64 docstrings), fresh workspace per run; counts, not timings.")
    body += ("\n\nNot at the minimum: " + "; ".join(misses) + "." if misses else "\n\nEvery shape is at its minimum.")
    body += ("\n\nMinimal = the requests of the cheapest plan written by hand for the same rows (the code is in "
             "`benchmarks/plan_shapes.py`), run with `optimize=False`.")
    write_section("Plan shapes: requests optimized vs unoptimized vs minimal", body,
                  "python -m benchmarks.run shapes")


if __name__ == "__main__":
    bench_shapes(argparse.Namespace())
    sys.exit(0)
