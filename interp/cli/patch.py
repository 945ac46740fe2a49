"""`interp patch`: activation patching sweeps with attribution patching (analyses.patching)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from interp.cli import common


@common.config_options("analyses.patching", "PatchingConfig",
                       help={"sites": "grids: resid | attn | mlp | heads (repeat or comma-separate)",
                             "layers": "layers swept (repeat; default every layer)"})
def patch(config,
          model: str = common.Model,
          task: Optional[str] = typer.Option(None, help="ioi | laundry | capitals (or give --pairs)"),
          pairs: Optional[Path] = typer.Option(None, help="JSONL of your own items: clean, corrupted, answer, wrong_answer"),
          n: int = typer.Option(8, help="items generated for --task"),
          length: Optional[int] = typer.Option(None, help="list length for --task laundry"),
          out: Path = common.ResumableOut, seed: Optional[int] = common.Seed,
          device: Optional[str] = common.Device, dtype: Optional[str] = common.Dtype,
          overwrite: bool = common.Overwrite) -> None:
    """Activation patching sweeps (residual stream, attention and MLP outputs, heads) with attribution patching.
    Resumable: a rerun with the same --out continues an interrupted run."""
    from analyses import patching
    from interp.circuits.tasks import load_task

    common.check_out(out, overwrite, resumable=True)
    grids = patching.check_sites([s.strip() for item in config.sites for s in item.split(",") if s.strip()])
    config = dataclasses.replace(config, sites=tuple(grids))
    options: dict = {"length": length} if length is not None else {}
    items = load_task(task, pairs, n, seed or 0, **options)  # exactly one of --task and --pairs, before the model loads
    m = common.load(model, device, dtype)
    result = patching.run(m, items, config, checkpoint=common.checkpoint(out, overwrite))
    result.save(out)
    common.write_log(out)
    common.finish(out)
    corr = ", ".join(f"{k} r={v:.2f}" for k, v in result.correlation.items())
    typer.echo(f"{result.n_items} items (solve rate {result.solve_rate:.0%}); grids {', '.join(result.grids)}"
               f"{'; attribution ' + corr if corr else ''}; {result.timings['total']:.0f} s")
    typer.echo(f"wrote {out}/result.json, report.html, log.txt")
