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
          out: Path = common.Out, seed: Optional[int] = common.Seed,
          device: Optional[str] = common.Device, dtype: Optional[str] = common.Dtype,
          overwrite: bool = common.Overwrite) -> None:
    """Activation patching sweeps (residual stream, attention and MLP outputs, heads) with attribution patching."""
    from analyses import patching
    from interp.circuits.tasks import from_pairs, make_task
    from interp.errors import InterpError

    common.check_out(out, overwrite)
    if (task is None) == (pairs is None):
        raise InterpError("give exactly one of --task (ioi, laundry, capitals) and --pairs FILE.jsonl")
    grids = patching.check_sites([s.strip() for item in config.sites for s in item.split(",") if s.strip()])
    config = dataclasses.replace(config, sites=tuple(grids))
    options = {"length": length} if length is not None else {}
    if pairs is not None:  # the items are made before the model loads
        items = from_pairs(pairs)
    else:
        assert task is not None  # exactly one of --task and --pairs, checked above
        items = make_task(task, n, seed or 0, **options)
    m = common.load(model, device, dtype)
    result = patching.run(m, items, config)
    result.save(out)
    common.write_log(out)
    corr = ", ".join(f"{k} r={v:.2f}" for k, v in result.correlation.items())
    typer.echo(f"{result.n_items} items (solve rate {result.solve_rate:.0%}); grids {', '.join(result.grids)}"
               f"{'; attribution ' + corr if corr else ''}; {result.timings['total']:.0f} s")
    typer.echo(f"wrote {out}/result.json, report.html, log.txt")
