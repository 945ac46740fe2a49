"""`interp heads`: heads as matrices (analyses.heads), and with `--task` the Talking Heads channel check on data."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interp.cli import common


@common.config_options("analyses.heads", "HeadsConfig", help={"modes": "composition kinds: Q, K, V (repeat)"})
def heads(config, model: str = common.Model, out: Path = common.Out, seed: Optional[int] = common.Seed,
          device: Optional[str] = common.Device, dtype: Optional[str] = common.Dtype,
          task: Optional[str] = typer.Option(None, help="also check channels on data: ioi or laundry (receivers chosen "
                                             "on one part of the items, inhibition scored on the other; writes "
                                             "OUT/channels/)"),
          n: int = typer.Option(48, min=4, help="items of --task (split into the select and score parts)"),
          receivers: int = typer.Option(3, min=1, help="movers chosen by direct effect on the select part"),
          select_share: float = typer.Option(0.5, help="share of the distinct prompts that choose the receivers"),
          components: bool = typer.Option(True, help="also score every sender component alone (the paper's Figure 2)"),
          overwrite: bool = common.Overwrite) -> None:
    """Heads as matrices: OV/QK singular value spectra, composition scores against random matrices, channels; with
    --task, each mover's channel scored on held-out items (the inhibition score)."""
    from analyses import heads as heads_analysis

    common.check_out(out, overwrite)
    if task is not None and task not in ("ioi", "laundry"):
        from interp.errors import InterpError

        raise InterpError(f"--task must be ioi or laundry, got {task!r}")
    if task is not None and "Q" not in [x.upper() for x in config.modes]:
        from interp.errors import InterpError

        raise InterpError("--task needs the Q composition (the inhibition route); keep Q in --modes")
    m = common.load(model, device, dtype)
    result = heads_analysis.run(m, None, config)
    result.save(out)
    s = result.summary()
    for mode in (x.upper() for x in config.modes):
        best = s["composition"][mode]["top_pairs"][0]
        typer.echo(f"{mode}-composition: mean {s['composition'][mode]['mean']:.4f} (random {s['baseline']['mean']:.4f}); "
                   f"strongest {best['sender'][0]}.{best['sender'][1]} -> {best['receiver'][0]}.{best['receiver'][1]} "
                   f"{best['score']:.3f}, components {best['components']} carry {sum(best['shares']):.0%}")
    if task is not None:
        from interp.circuits.tasks import make_task

        study = heads_analysis.channels(m, make_task(task, n, seed=config.seed), result, heads_analysis.ChannelsConfig(
            receivers=receivers, select_share=select_share, per_component=components, seed=config.seed))
        study.save(out / "channels")
        typer.echo(f"receivers chosen on {len(study.split['select'])} items, inhibition scored on "
                   f"{len(study.split['score'])} others:")
        for ch in study.pairs:
            inh = ch["inhibition"]
            typer.echo(f"  {ch['sender'][0]}.{ch['sender'][1]} -> {ch['receiver'][0]}.{ch['receiver'][1]} components "
                       f"{ch['components']}: inhibition {inh['channel']['score']:.4f} "
                       f"(control {inh['control']['score']:.4f})")
    common.write_log(out)
    typer.echo(f"wrote {out}/result.json, report.html, heads.safetensors, log.txt"
               + (f", {out}/channels/" if task is not None else ""))
