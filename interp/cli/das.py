"""`interp das`: distributed alignment search with baselines and the illusion checks (analyses.subspaces)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interp.cli import common


@common.config_options("analyses.subspaces", "SubspacesConfig", skip=("progress",), rename={"positions": "position"},
                       help={"positions": "patched positions counted from the end (repeat for several)"})
def das(config, model: str = common.Model,
        task: str = typer.Option("ioi", help="ioi | laundry | capitals"),
        n: int = typer.Option(64, help="items generated (the solved ones are kept, then split train/val/test)"),
        corrupt: str = typer.Option("swap", help="IOI corruption: swap (the IO repeated instead of S) or abc"),
        out: Path = common.Out, batch_size: Optional[int] = common.BatchSize,
        seed: Optional[int] = common.Seed, device: Optional[str] = common.Device,
        dtype: Optional[str] = common.Dtype, overwrite: bool = common.Overwrite) -> None:
    """DAS: learn a k-dim subspace at a site by interchange interventions (corrupted run <- clean run's subspace),
    with baselines and the interpretability-illusion checks."""
    from analyses import subspaces
    from interp.circuits.tasks import make_task

    common.check_out(out, overwrite)
    items = make_task(task, n, config.seed, **({"corrupt": corrupt} if task == "ioi" else {}))  # before the model loads
    m = common.load(model, device, dtype)
    result = subspaces.run(m, items, config)
    result.save(out)  # the DAS subspace (Subspace.save) and the Result, in one folder
    common.write_log(out)
    rec = ", ".join(f"{subspaces.LABELS[name]} {v:.3f}" for name, v in result.recoveries.items())
    typer.echo(f"{result.site}, k={config.k}: test recovery {rec}")
    for name, d in result.diagnoses.items():
        typer.echo(f"{subspaces.LABELS[name]}: {d.verdict}" + "".join(f"\n  {r}" for r in d.reasons))
    typer.echo(f"DAS {result.fit.train_s:.1f} s, {len(result.fit.curves['train_loss'])} epochs; "
               f"wrote {out}/subspace.safetensors, subspace.json, result.json, report.html, log.txt")
