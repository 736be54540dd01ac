"""The ``lazyllm`` command line (typer).

Commands::

    lazyllm demo [--limit N] [--out DIR]          the main job (docs -> QA -> judge -> preferences)
    lazyllm run workflow.py [--out DIR]            run a workflow script's frames
    lazyllm explain workflow.py                    print the plan of each frame; runs nothing
    lazyllm cache stats | clear | gc --older-than DAYS | verify | repair
    lazyllm card PATH                              a workspace's run logs, or a saved dataset's card
    lazyllm doctor [--measure] [--json]            the machine, the engines, the default model's choice

``--workspace`` (or ``LAZYLLM_HOME``) picks the workspace everywhere.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer
from lazyllm.cards import CARD_JSON, CARD_README, DataCard
from lazyllm.core.layout import read_run_logs, run_totals
from lazyllm.doctor import diagnose, format_report
from lazyllm.examples import docs_to_qa
from lazyllm.frame import Frame
from lazyllm.planner.cache import repair_cache, verify_cache
from lazyllm.planner.workspace import resolve_workspace

app = typer.Typer(add_completion=False, no_args_is_help=True, help="lazyllm: lazy frames for LLM data workflows.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect or clear the workspace's LLM cache.")
app.add_typer(cache_app, name="cache")

_WORKSPACE_HELP = "workspace folder (default LAZYLLM_HOME or ./.lazyllm)"


@app.command()
def demo(
    limit: int = typer.Option(64, help="number of standard-library functions"),
    out: str = typer.Option("lazyllm_output", help="output folder for the parquet files"),
    workspace: Optional[str] = typer.Option(None, help=_WORKSPACE_HELP),
    quiet: bool = typer.Option(False, help="no progress bars"),
) -> None:
    """Run the main job: docs -> question -> answer -> judge -> preference pairs on the embedded model.

    Writes qa.parquet, kept.parquet and preferences.parquet into --out.
    """
    argv = ["--limit", str(limit), "--out", out] + (["--workspace", workspace] if workspace else [])
    docs_to_qa.main(argv + (["--quiet"] if quiet else []))


@app.command()
def doctor(
    measure: bool = typer.Option(False, help="time each installed engine on the default model first "
                                             "(about half a minute per engine), and keep the result"),
    workspace: Optional[str] = typer.Option(None, help=_WORKSPACE_HELP),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Print the machine (CPU model, flags that matter, cores, GPUs), the installed engines,
    what was measured, and the default model's engine, device and dtype with the reasons."""
    report = diagnose(workspace, measure=measure)
    typer.echo(json.dumps(report, indent=2, default=str) if as_json else format_report(report))


# ------------------------------------------------------------------------------------
# run / explain a workflow script
# ------------------------------------------------------------------------------------


@contextmanager
def _script_env(path: Path, argv: list[str], env: dict[str, str]) -> Iterator[None]:
    """sys.argv, sys.path[0] and environment variables as when running ``python path``, restored after."""
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    saved_env = {k: os.environ.get(k) for k in env}
    sys.argv = [str(path), *argv]
    sys.path.insert(0, str(path.parent.resolve()))
    os.environ.update(env)
    try:
        yield
    finally:
        sys.argv[:] = saved_argv
        sys.path[:] = saved_path
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _load_script(path: Path, argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Execute the script's module body (not its ``if __name__ == "__main__"`` block)."""
    if not path.is_file():
        typer.echo(f"error: no such file: {path}", err=True)
        raise typer.Exit(2)
    with _script_env(path, argv, env):
        return runpy.run_path(str(path), run_name="__lazyllm__")


def _frames(namespace: dict[str, Any]) -> dict[str, Any]:
    return {name: v for name, v in namespace.items() if isinstance(v, Frame) and not name.startswith("_")}


def _env(workspace: Optional[str], quiet: bool) -> dict[str, str]:
    env = {"LAZYLLM_HOME": str(Path(workspace).absolute())} if workspace else {}
    if quiet:
        env["LAZYLLM_QUIET"] = "1"
    return env


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    script: Path = typer.Argument(..., help="a Python file that builds lazyllm frames"),
    workspace: Optional[str] = typer.Option(None, help=_WORKSPACE_HELP),
    out: Optional[Path] = typer.Option(None, help="write each collected frame to OUT/<name>.parquet"),
    quiet: bool = typer.Option(False, help="no progress bars"),
) -> None:
    """Run a workflow script.

    If it defines ``main()``, that is called (extra arguments go to ``sys.argv``).
    Otherwise every module-level ``lazyllm.Frame`` (names not starting with ``_``) is
    collected in one run (``lazyllm.collect_all``: shared subplans run once) and its
    shape printed.
    """
    import lazyllm

    env = _env(workspace, quiet)
    namespace = _load_script(script, list(ctx.args), env)
    with _script_env(script, list(ctx.args), env):
        if callable(namespace.get("main")):
            result = namespace["main"]()
            if result is not None and not isinstance(result, int):
                _print_shapes(result if isinstance(result, dict) else {"result": result}, out)
            return
        frames = _frames(namespace)
        if not frames:
            typer.echo(f"error: {script} defines no main() and no module-level lazyllm.Frame; "
                       "assign the frames to module-level names or define main().", err=True)
            raise typer.Exit(1)
        start = time.perf_counter()
        results = lazyllm.collect_all(list(frames.values()))
    _print_shapes(dict(zip(frames, results)), out)
    typer.echo(f"collected {len(frames)} frame(s) in {time.perf_counter() - start:.1f} s")


def _print_shapes(results: dict[str, Any], out: Optional[Path]) -> None:
    import polars as pl

    for name, df in results.items():
        if not isinstance(df, pl.DataFrame):
            continue
        typer.echo(f"{name}: {df.height} rows × {df.width} columns ({', '.join(df.columns)})")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            df.write_parquet(out / f"{name}.parquet")
    if out is not None:
        typer.echo(f"written to {out.resolve()}")


@app.command()
def explain(
    script: Path = typer.Argument(..., help="a Python file that builds lazyllm frames"),
    workspace: Optional[str] = typer.Option(None, help=_WORKSPACE_HELP),
    logical: bool = typer.Option(False, "--logical", help="the plan as written, not optimized"),
) -> None:
    """Print the plan of every module-level frame of a script, with predicted LLM calls.

    Runs the script's module body only (which should just build frames): no LLM is
    called and no model is loaded; the cache is read to predict hits.
    """
    env = _env(workspace, quiet=True)
    frames = _frames(_load_script(script, [], env))
    if not frames:
        typer.echo(f"error: {script} defines no module-level lazyllm.Frame.", err=True)
        raise typer.Exit(1)
    with _script_env(script, [], env):
        for name, frame in frames.items():
            typer.echo(f"== {name} ({frame.fingerprint[:12]}) ==")
            typer.echo(frame.explain(optimized=not logical))
            typer.echo("")


# ------------------------------------------------------------------------------------
# cache
# ------------------------------------------------------------------------------------


@cache_app.command("stats")
def cache_stats(workspace: Optional[str] = typer.Option(None, help="workspace folder")) -> None:
    """Entries and size of the prompt cache."""
    ws = resolve_workspace(workspace)
    if not ws.has_cache():
        typer.echo(json.dumps({"path": str(ws.path / "cache"), "entries": 0}))
        return
    typer.echo(json.dumps(ws.cache.stats(), indent=2))


@cache_app.command("clear")
def cache_clear(
    workspace: Optional[str] = typer.Option(None, help="workspace folder"),
    yes: bool = typer.Option(False, "--yes", help="do not ask for confirmation"),
) -> None:
    """Delete every cached LLM response (results and models stay)."""
    ws = resolve_workspace(workspace)
    if not ws.has_cache():
        typer.echo("cache is empty")
        return
    if not yes:
        typer.confirm(f"Delete all {len(ws.cache)} cached responses in {ws.path}?", abort=True)
    typer.echo(f"deleted {ws.cache.clear()} entries")


@cache_app.command("gc")
def cache_gc(
    older_than: float = typer.Option(..., "--older-than", min=0, help="delete entries stored more than DAYS ago"),
    workspace: Optional[str] = typer.Option(None, help="workspace folder"),
    dry_run: bool = typer.Option(False, "--dry-run", help="count what would be deleted, delete nothing"),
) -> None:
    """Delete cached LLM responses stored more than --older-than DAYS ago.

    A later collect that needs them calls the model again.
    """
    ws = resolve_workspace(workspace)
    if not ws.has_cache():
        typer.echo("cache is empty")
        return
    cutoff = time.time() - older_than * 86_400
    total = 0
    old: list[bytes] = []
    for key, record in ws.cache.items():
        total += 1
        stored = record.get("t")
        if isinstance(stored, (int, float)) and stored < cutoff:
            old.append(key)
    if dry_run:
        typer.echo(f"would delete {len(old)} of {total} entries older than {older_than:g} days")
        return
    deleted = ws.cache.delete_many(old)
    typer.echo(f"deleted {deleted} of {total} entries older than {older_than:g} days")


@cache_app.command("verify")
def cache_verify(workspace: Optional[str] = typer.Option(None, help="workspace folder")) -> None:
    """Check the LMDB environment and the format of every cached value; change nothing.

    Prints what was found as JSON; exits with status 1 when anything is damaged
    (then run ``lazyllm cache repair``).
    """
    ws = resolve_workspace(workspace)
    if not ws.has_cache():
        typer.echo(json.dumps({"path": str(ws.path / "cache"), "ok": True, "expected": 0, "readable": 0}))
        return
    check = verify_cache(ws.path / "cache")
    typer.echo(json.dumps(check.to_dict(), indent=2))
    if not check.ok:
        lost = "an unknown number of" if check.lost is None else f"{check.lost} of {check.expected}"
        typer.echo(f"the cache is damaged: {lost} entries unreadable; run `lazyllm cache repair --workspace "
                   f"{ws.path}`", err=True)
        raise typer.Exit(1)


@cache_app.command("repair")
def cache_repair(
    workspace: Optional[str] = typer.Option(None, help="workspace folder"),
    yes: bool = typer.Option(False, "--yes", help="do not ask for confirmation"),
) -> None:
    """Copy every readable cached response into a new LMDB environment; report how many were lost.

    The damaged environment is kept next to it (``cache.damaged-<time>``). Requests
    whose entries were lost are recomputed by the next collect. Stop other runs on
    this workspace first.
    """
    ws = resolve_workspace(workspace)
    if not ws.has_cache():
        typer.echo("cache is empty: nothing to repair")
        return
    if not yes:
        typer.confirm(f"Rebuild the cache of {ws.path} (stop other runs on it first)?", abort=True)
    check = repair_cache(ws.path / "cache")
    typer.echo(json.dumps(check.to_dict(), indent=2))
    lost = "an unknown number (its statistics were unreadable)" if check.lost is None else str(check.lost)
    typer.echo(f"salvaged {check.salvaged} entries, lost {lost}; the damaged environment is kept at {check.kept_at}")


# ------------------------------------------------------------------------------------
# card
# ------------------------------------------------------------------------------------


@app.command()
def card(
    path: Path = typer.Argument(..., help="a workspace folder, or a dataset folder written by save_dataset"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of text"),
) -> None:
    """Print a saved dataset's card, or a summary of a workspace's run logs."""
    if (path / CARD_JSON).is_file() or (path.is_file() and path.name == CARD_JSON):
        data_card = DataCard.load(path)
        readme = path / CARD_README
        if as_json:
            typer.echo(data_card.to_json())
        else:
            typer.echo(readme.read_text(encoding="utf-8") if readme.is_file() else data_card.to_markdown())
        return
    if (path / "runs").is_dir() or (path / "cache").is_dir():
        summaries = [_run_summary(p, record) for p, record in read_run_logs(path)]
        if as_json:
            typer.echo(json.dumps(summaries, indent=2))
            return
        typer.echo(f"workspace {path.resolve()}: {len(summaries)} run log(s)")
        for s in summaries:
            frames = ", ".join(f"#{f['fingerprint'][:12]} ({f['rows']} rows)" for f in s["frames"])
            typer.echo(f"{s['finished_at']}  {s['seconds']:.1f} s  {frames}  ·  {s['llm_nodes']} LLM nodes · "
                       f"{s['calls']} LLM calls · {s['cache_hits']} cache hits · "
                       f"{s['input_tokens']} tokens in · {s['output_tokens']} tokens out  [{s['log']}]")
        return
    typer.echo(f"error: {path} is neither a workspace (runs/, cache/) nor a dataset folder ({CARD_JSON}).", err=True)
    raise typer.Exit(2)


def _run_summary(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    return {
        "log": path.name,
        "finished_at": record.get("finished_at"),
        "seconds": float(record.get("seconds", 0.0)),
        "frames": [{"fingerprint": f["fingerprint"], "rows": f.get("rows")} for f in record.get("frames", [])],
        **run_totals(record),
    }


def main() -> None:
    app()


if __name__ == "__main__":
    main()
