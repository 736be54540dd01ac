"""The main job: questions and answers about Python standard-library functions.

Reads the docstrings of a fixed, sorted set of 64 standard-library functions (real
text present on every machine), asks the model for a question a programmer would
ask about each, answers it from the documentation, and writes the result to
parquet. Run it with ``lazyllm demo`` or ``python -m lazyllm.examples.docs_to_qa``.

A second run is served from the workspace's cache in seconds (no model is loaded).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import time
from pathlib import Path
from typing import Any

import polars as pl

import lazyllm

__all__ = ["FUNCTIONS", "load_docs", "build", "main"]

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


def build(limit: int = 64, model: Any = None, question_tokens: int = 48, answer_tokens: int = 96) -> lazyllm.Frame:
    """The lazy docs -> question -> answer plan (nothing runs until collect)."""
    model = model or lazyllm.default_model()
    docs = lazyllm.from_polars(load_docs(limit), label="stdlib docstrings")
    return (
        docs.generate("question", model, system=QUESTION_SYSTEM, prompt=QUESTION_PROMPT,
                      max_tokens=question_tokens, stop=["\n"])
        .generate("answer", model, prompt=ANSWER_PROMPT, max_tokens=answer_tokens)
        .select("name", "module", "doc", "question", "answer", "question_error", "answer_error")
    )


def main(argv: list[str] | None = None) -> pl.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=64, help="number of functions (default 64)")
    parser.add_argument("--out", default="lazyllm_output/docs_qa.parquet", help="parquet output path")
    parser.add_argument("--workspace", default=None, help="workspace folder (default LAZYLLM_HOME or ./.lazyllm)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    frame = build(args.limit)
    print("Plan (before running):")
    print(frame.explain(workspace=args.workspace))
    start = time.perf_counter()
    df = frame.write_parquet(args.out, workspace=args.workspace, progress=not args.quiet)
    seconds = time.perf_counter() - start
    with pl.Config(tbl_rows=5, fmt_str_lengths=80, tbl_width_chars=160):
        print(df.select("name", "question", "answer").head(5))
    errors = df.filter(pl.col("question_error").is_not_null() | pl.col("answer_error").is_not_null()).height
    print(f"{df.height} rows ({errors} with errors) written to {Path(args.out).resolve()} in {seconds:.1f} s")
    return df


if __name__ == "__main__":
    main()
