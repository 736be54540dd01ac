"""Self-rewarding loop, two rounds, as one lazy program (Yuan et al. 2024, "Self-Rewarding
Language Models"): the model samples two answers per prompt, judges them itself
(pairwise, MT-Bench prompt), is trained with DPO on the (chosen, rejected) pairs, and
the trained model is the generator and judge of the next round.

Nothing runs until the final ``collect``: the planner then generates with the base
model, judges, trains round 1, generates and judges with the round-1 model, trains
round 2, and answers the evaluation prompts with it. Every step is cached: a rerun
neither calls a model nor retrains.

Run: ``python -m lazyllm.examples.self_rewarding`` (CPU: a few minutes).

A 135M model is a weak, position-biased judge: with the default both-orders check
(``swap=True``) most of its verdicts are ties and few pairs remain. ``--no-swap``
keeps the single-order verdicts so that the loop has data to train on; use a larger
model for real work.
"""

from __future__ import annotations

import argparse
from typing import Any

import polars as pl

import lazyllm

__all__ = ["PROMPTS", "build", "main"]

PROMPTS = (
    "How do I read a text file line by line in Python?",
    "What does a Python list comprehension do?",
    "How do I sort a list of dictionaries by a key?",
    "What is the difference between a tuple and a list?",
    "How do I check whether a key is in a dictionary?",
    "What does the `with` statement do?",
    "How do I join a list of strings with commas?",
    "What is a Python generator?",
)
EVAL_PROMPTS = ("How do I reverse a string in Python?", "What does `enumerate` return?")


def one_round(prompts: lazyllm.Frame, model: Any, round_index: int, *, swap: bool, tokens: int,
              steps: int) -> tuple[lazyllm.Frame, Any]:
    """Pairs judged by ``model`` itself, and the DPO-trained model of this round (both lazy)."""
    pairs = (
        prompts.generate("samples", model, prompt="{{ prompt }}", n=2, temperature=0.8, top_p=0.95,
                         seed=100 + round_index, max_tokens=tokens)
        .with_columns(answer_1=pl.col("samples").list.get(0), answer_2=pl.col("samples").list.get(1))
        .filter(pl.col("answer_1") != pl.col("answer_2"))
        .judge_pairwise("winner", model, a="answer_1", b="answer_2", question="prompt", swap=swap)
        .filter(pl.col("winner").is_in(["a", "b"]))
        .select(
            "prompt",
            pl.when(pl.col("winner") == "a").then(pl.col("answer_1")).otherwise(pl.col("answer_2")).alias("chosen"),
            pl.when(pl.col("winner") == "a").then(pl.col("answer_2")).otherwise(pl.col("answer_1")).alias("rejected"),
        )
    )
    trained = pairs.train(lazyllm.DPO(base=model, beta=0.1, lora=lazyllm.LoRA(r=8, alpha=16), max_steps=steps,
                                      batch_size=2, learning_rate=5e-4, max_length=192, seed=round_index))
    return pairs, trained


def build(rounds: int = 2, *, model: Any = None, swap: bool = True, tokens: int = 48, steps: int = 4,
          prompts: tuple[str, ...] = PROMPTS) -> dict[str, Any]:
    """The lazy loop: per-round pair frames, the final model, and its answers to evaluation prompts."""
    model = model or lazyllm.default_model()
    source = lazyllm.from_dicts([{"prompt": p} for p in prompts])
    frames: dict[str, Any] = {}
    current = model
    for r in range(1, rounds + 1):
        pairs, current = one_round(source, current, r, swap=swap, tokens=tokens, steps=steps)
        frames[f"pairs_round_{r}"] = pairs
    evaluation = lazyllm.from_dicts([{"prompt": p} for p in EVAL_PROMPTS])
    frames["final_answers"] = (
        evaluation.generate("base_answer", model, prompt="{{ prompt }}", max_tokens=tokens)
        .generate("final_answer", current, prompt="{{ prompt }}", max_tokens=tokens)
    )
    frames["final_model"] = current
    return frames


def main(argv: list[str] | None = None) -> dict[str, pl.DataFrame]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-swap", action="store_true", help="judge each pair in one order only")
    parser.add_argument("--steps", type=int, default=4, help="DPO steps per round")
    parser.add_argument("--workspace", default=None)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    job = build(args.rounds, swap=not args.no_swap, steps=args.steps)
    final = job["final_answers"]
    print(final.explain(workspace=args.workspace))
    names = [k for k in job if k != "final_model"]
    results = dict(zip(names, lazyllm.collect_all([job[k] for k in names], workspace=args.workspace,
                                                   progress=not args.quiet)))
    for r in range(1, args.rounds + 1):
        print(f"round {r}: {results[f'pairs_round_{r}'].height} preference pairs")
    with pl.Config(fmt_str_lengths=80, tbl_width_chars=170):
        print(results["final_answers"].select("prompt", "base_answer", "final_answer"))
    return results


if __name__ == "__main__":
    main()
