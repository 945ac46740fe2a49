"""The `interp` command line: the app, its commands and the one error path.

One module per analysis or command group (capture, directions, steer/ablate, patch, heads, das, truthful, overlap,
concepts, attack, models, demo); the options they share, the options generated from the analyses' config
dataclasses and the output-folder convention are in `interp.cli.common`. Heavy imports happen inside the
commands, so `interp --help` stays fast.
"""

from __future__ import annotations

import sys

import typer

from interp.cli import attack, capture, concepts, das, demo, directions, heads, models, overlap, patch, steer, truthful

app = typer.Typer(help="Find and use the subspaces inside language models.", no_args_is_help=True,
                  pretty_exceptions_enable=False)

app.add_typer(models.app, name="models")
app.command("capture")(capture.capture)
app.add_typer(directions.app, name="directions")
app.command("steer")(steer.steer)
app.command("ablate")(steer.ablate)
app.command("attack")(attack.attack)
app.command("patch")(patch.patch)
app.command("heads")(heads.heads)
app.add_typer(truthful.app, name="truthful")
app.command("das")(das.das)
app.add_typer(overlap.app, name="overlap")
app.add_typer(concepts.app, name="concepts")
app.command("demo")(demo.demo)


def main() -> None:
    """Console entry point. The one error path: an InterpError (a bad input, said in words) ends the command with
    `error: <message>` on one line of stderr and exit code 2, not a traceback."""
    from interp.errors import InterpError

    try:
        app()
    except InterpError as e:
        typer.secho(f"error: {e}", err=True, fg="red")
        sys.exit(2)
