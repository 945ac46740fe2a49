"""`interp das`: distributed alignment search with baselines and the illusion checks (analyses.subspaces)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interp.cli import common


@common.config_options("analyses.subspaces", "SubspacesConfig", skip=("progress",),
                       rename={"positions": "position", "readers": "reader", "reader_weights": "reader_weight"},
                       help={"positions": "patched positions counted from the end (repeat for several)",
                             "readers": "a head LAYER.HEAD whose weights read a residual site (repeat; default: the "
                                        "top --n-readers heads of --sweep, else none)",
                             "reader_weights": "which weights of the reader heads span what they read: Q | K | V "
                                               "(repeat for several)"})
def das(config, model: str = common.Model,
        task: Optional[str] = typer.Option(None, help="ioi | laundry | capitals (default ioi; or give --pairs)"),
        pairs: Optional[Path] = typer.Option(None, help="JSONL of your own items: clean, corrupted, answer, "
                                             "wrong_answer, optionally target and part (train | test)"),
        n: int = typer.Option(64, help="items generated (the solved ones are kept, then split train/val/test)"),
        test: float = typer.Option(0.25, help="share of the generated items drawn from the test vocabulary (names, "
                                   "objects, places, templates the training items never use)"),
        corrupt: str = typer.Option("position", help="IOI pairs: position (the position of S, both directions, and "
                                    "pairs whose label is kept; Makelov et al.'s) | swap | abc (one-way pairs)"),
        kinds: str = typer.Option("both", help="position pairs in training: both (label-changing and kept) | "
                                  "changing"),
        preserve: str = typer.Option("same", help="a kept-label position pair's source: same (the base prompt "
                                     "itself, as the reference) | names (two new names)"),
        sweep: Optional[Path] = typer.Option(None, help="an `interp patch --sites heads` output (folder or "
                                             "result.json) whose top heads read a residual site; run it on items "
                                             "other than the test items"),
        out: Path = common.Out, batch_size: Optional[int] = common.BatchSize,
        seed: Optional[int] = common.Seed, device: Optional[str] = common.Device,
        dtype: Optional[str] = common.Dtype, overwrite: bool = common.Overwrite) -> None:
    """DAS: learn a k-dim subspace at a site by interchange interventions (corrupted run <- clean run's subspace),
    with baselines and the interpretability-illusion checks."""
    from analyses import subspaces
    from interp.circuits.tasks import load_task

    common.check_out(out, overwrite)
    options: dict = {"test": test} if config.split == "disjoint" else {}
    if (task or "ioi") == "ioi":
        options["corrupt"] = corrupt
        if corrupt == "position":
            options.update(kinds=kinds, preserve=preserve)
    items = load_task(task, pairs, n, config.seed, default="ioi", **options)  # before the model loads
    m = common.load(model, device, dtype)
    result = subspaces.run(m, subspaces.SubspacesData(items, sweep=sweep), config)
    result.save(out)  # the DAS subspace (Subspace.save) and the Result, in one folder
    common.write_log(out)
    rec = ", ".join(f"{subspaces.LABELS[name]} {v:.3f}" for name, v in result.recoveries.items())
    typer.echo(f"{result.site}, k={config.k}, {result.fit.split.how} split: test recovery {rec}")
    if result.readers.get("heads"):
        typer.echo(f"readers: {', '.join(result.readers['heads'])} ({'/'.join(result.readers['weights'])})")
    for name, d in result.diagnoses.items():
        typer.echo(f"{subspaces.LABELS[name]}: {d.verdict}" + "".join(f"\n  {r}" for r in d.reasons))
    for departure in result.departures:
        typer.echo(f"departure: {departure}")
    typer.echo(f"DAS {result.fit.train_s:.1f} s, {len(result.fit.curves['train_loss'])} epochs; "
               f"wrote {out}/subspace.safetensors, subspace.json, result.json, report.html, log.txt")
