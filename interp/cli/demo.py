"""`interp demo`: the main job (`make demo`)."""

from __future__ import annotations

from pathlib import Path

import typer

from interp.cli import common


def demo(out: Path = typer.Option(Path("out/demo"), "--out", help="output folder (new or empty unless --overwrite)"),
         model: str = common.Model,
         n: int = typer.Option(48, help="harmful and harmless training prompts, of each (validation prompts come from "
                                        "separate splits); more give a steadier direction and more for the filters "
                                        "to choose from, and take longer (a full run, `interp directions extract`, "
                                        "takes 128)"),
         overwrite: bool = common.Overwrite) -> None:
    """The main job: capture harmful vs harmless prompts, the refusal direction, per-layer separation, steered answers.

    Sized to finish in minutes on a laptop CPU: every size smaller than a full run's is printed with what it costs
    the result, beside the full run's command, and recorded in summary.json with each step's time. Where the model
    refuses too weakly for a check of the method, the check is loosened openly; the demo ends by saying in plain
    words what that means for the result and what to try (more prompts, another model).
    """
    from analyses.demo import run_demo

    common.check_out(out, overwrite)
    run_demo(model, out, n)
    common.write_log(out)
