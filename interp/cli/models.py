"""`interp models` and `interp models prepare NAME`: the bundled real chat models."""

from __future__ import annotations

import typer

app = typer.Typer(help="Bundled real chat models: list them, prepare one.", invoke_without_command=True)


@app.callback()
def models(ctx: typer.Context) -> None:
    """List the bundled models with size, state and path."""
    if ctx.invoked_subcommand is None:
        from interp.data.registry import describe

        for row in describe():
            typer.echo(f"{row['name']:<30} {row['size_mb']:>6} MB  {row['state']:<14} {row['path']}")


@app.command("prepare")
def models_prepare(name: str = typer.Argument(..., help="a bundled model name (see `interp models`)"),
                   force: bool = typer.Option(False, help="prepare again even if already prepared")) -> None:
    """Assemble, sha256-check and convert a bundled model once into the cache."""
    from interp.data.registry import prepare

    typer.echo(f"{name} ready at {prepare(name, force=force)}")
