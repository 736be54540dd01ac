"""The ``lazyllm`` command line (typer)."""

from __future__ import annotations

import json
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="lazyllm: lazy frames for LLM data workflows.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect or clear the workspace's LLM cache.")
app.add_typer(cache_app, name="cache")


@app.command()
def demo(
    limit: int = typer.Option(64, help="number of standard-library functions"),
    out: str = typer.Option("lazyllm_output", help="output folder for the parquet files"),
    workspace: Optional[str] = typer.Option(None, help="workspace folder (default LAZYLLM_HOME or ./.lazyllm)"),
    quiet: bool = typer.Option(False, help="no progress bars"),
) -> None:
    """Run the main job: docs -> question -> answer on the embedded default model."""
    from lazyllm.examples import docs_to_qa

    argv = ["--limit", str(limit), "--out", out] + (["--workspace", workspace] if workspace else [])
    docs_to_qa.main(argv + (["--quiet"] if quiet else []))


@cache_app.command("stats")
def cache_stats(workspace: Optional[str] = typer.Option(None, help="workspace folder")) -> None:
    """Entries and size of the prompt cache."""
    from lazyllm.planner.workspace import resolve_workspace

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
    from lazyllm.planner.workspace import resolve_workspace

    ws = resolve_workspace(workspace)
    if not ws.has_cache():
        typer.echo("cache is empty")
        return
    if not yes:
        typer.confirm(f"Delete all {len(ws.cache)} cached responses in {ws.path}?", abort=True)
    typer.echo(f"deleted {ws.cache.clear()} entries")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
