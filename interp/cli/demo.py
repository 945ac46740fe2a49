"""`interp demo`: the main job (`make demo`)."""

from __future__ import annotations

from pathlib import Path

import typer

from interp.cli import common


def demo(out: Path = typer.Option(Path("out/demo"), "--out", help="output folder (new or empty unless --overwrite)"),
         model: str = common.Model,
         n: int = typer.Option(64, help="prompts per class (12 of each are held out for validation)"),
         overwrite: bool = common.Overwrite) -> None:
    """The main job: capture harmful vs harmless prompts, per-layer separation, the refusal direction, steered answers."""
    from analyses.demo import run_demo

    common.check_out(out, overwrite)
    run_demo(model, out, n)
    common.write_log(out)
