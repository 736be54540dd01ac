"""Judge methods compared by how well they rank a right answer above a wrong one (issue 16:
whether ``judge(method="expected")`` should be the default).

No labelled data can be downloaded here, so the benchmark builds pairs whose order is known:
for each of the main job's docstrings, the question "What does `name` do?" with its *right*
answer (the first sentence of that function's own documentation) and three *wrong* answers
(the first sentences of the next three functions' documentation). Each answer is judged alone
(single-answer grading, MT-Bench's prompt, no reference), once per method, with the same
model. The figure per method is the pairwise accuracy of its scores: the share of (right,
wrong) pairs of a question whose right answer scores above the wrong one, ties counted half
(the AUC over matched pairs; 0.5 is chance, and a judge that gives every answer the same
score gets exactly 0.5), with a 95% bootstrap interval that resamples questions (Efron &
Tibshirani 1993). Also reported: distinct scores, and the share of ties.

Run: ``python -m benchmarks.run judge-methods`` (the embedded model, 64 docstrings, 2 x 4 x
64 prefills, a few minutes on 2 cores; ``--limit`` sets the docstrings, ``--model test`` the
deterministic engine).
"""

from __future__ import annotations

import argparse
import random
import re
import tempfile

import polars as pl

#: Wrong answers per question: the first sentences of the next WRONG functions' documentation.
WRONG = 3


def pairs(limit: int) -> pl.DataFrame:
    """One row per docstring: name, question, right answer, wrong answers ``wrong1..WRONG``."""
    from lazyllm.examples import docs_to_qa

    docs = docs_to_qa.load_docs(limit)
    first = [re.split(r"(?<=[.!?])\s", " ".join(d.split()), maxsplit=1)[0] for d in docs["doc"].to_list()]
    return pl.DataFrame({
        "name": docs["name"],
        "question": [f"What does the Python function `{n}` do?" for n in docs["name"].to_list()],
        "right": first,
        **{f"wrong{k}": first[k:] + first[:k] for k in range(1, WRONG + 1)},
    })


def _win(r: float, w: float) -> float:
    return 1.0 if r > w else 0.5 if r == w else 0.0


def accuracy(right: list[float | None], wrongs: list[list[float | None]], *, rounds: int = 2000,
             seed: int = 0) -> tuple[float, tuple[float, float], float, int]:
    """(pairwise accuracy with ties counted half, its 95% bootstrap interval over questions,
    share of ties, pairs scored)."""
    per_q = [[_win(r, w) for w in ws if w is not None] for r, ws in zip(right, zip(*wrongs)) if r is not None]
    per_q = [q for q in per_q if q]
    pairs_ = [x for q in per_q for x in q]
    if not pairs_:
        return float("nan"), (float("nan"), float("nan")), float("nan"), 0
    rng = random.Random(seed)
    boots = []
    for _ in range(rounds):
        pick = [x for q in rng.choices(per_q, k=len(per_q)) for x in q]
        boots.append(sum(pick) / len(pick))
    boots.sort()
    ci = (boots[int(0.025 * rounds)], boots[int(0.975 * rounds) - 1])
    return sum(pairs_) / len(pairs_), ci, sum(1 for x in pairs_ if x == 0.5) / len(pairs_), len(pairs_)


def bench_judge_methods(args: argparse.Namespace) -> None:
    import lazyllm

    from .run import pick_model, shared_models, write_section

    model = pick_model(args.model)
    data = pairs(args.limit)
    rows = ["| method | pairwise accuracy (ties ½) | 95% CI | ties | distinct scores | scores (min–max) | pairs |",
            "|---|---|---|---|---|---|---|"]
    found = {}
    with tempfile.TemporaryDirectory() as ws:
        if args.model != "test":
            (lazyllm.Workspace(ws).path / "models").symlink_to(shared_models())
        frame = lazyllm.from_polars(data, label="right vs wrong answers")
        for method in ("argmax", "expected"):
            judged = frame
            for col in ["right"] + [f"wrong{k}" for k in range(1, WRONG + 1)]:
                judged = judged.judge(f"s_{col}", model, question="question", answer=col, method=method)
            df = judged.collect(workspace=ws, progress=False)
            wrong_cols = [f"s_wrong{k}" for k in range(1, WRONG + 1)]
            acc, ci, ties, n = accuracy(df["s_right"].to_list(), [df[c].to_list() for c in wrong_cols])
            scores = pl.concat([df[c] for c in ["s_right", *wrong_cols]]).drop_nulls().cast(pl.Float64)
            found[method] = acc
            rows.append(f"| `{method}` | {acc:.3f} | {ci[0]:.3f}–{ci[1]:.3f} | {ties:.0%} | {scores.n_unique()} | "
                        f"{scores.min():.2f}–{scores.max():.2f} | {n} |")
    model_name = getattr(model, "display_name", str(model))
    body = "\n".join(rows) + (
        f"\n\nModel: {model_name} (float32, transformers engine as the default model picks it), "
        f"{args.limit} docstrings of the main job. Right answer: the first sentence of the function's own "
        "documentation; wrong answers: the first sentences of the next three functions'. Each answer judged alone "
        "(MT-Bench single-answer prompt, no reference), scale 1–10. Counts of a deterministic computation "
        "(greedy prefills), not timings.")
    write_section("Judge methods: which ranks a right answer above a wrong one (issue 16)", body,
                  f"python -m benchmarks.run judge-methods --limit {args.limit}"
                  + (" --model test" if args.model == "test" else ""))
