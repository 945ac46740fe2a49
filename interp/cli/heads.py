"""`interp heads`: heads as matrices (analyses.heads)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interp.cli import common


@common.config_options("analyses.heads", "HeadsConfig", help={"modes": "composition kinds: Q, K, V (repeat)"})
def heads(config, model: str = common.Model, out: Path = common.Out, seed: Optional[int] = common.Seed,
          device: Optional[str] = common.Device, dtype: Optional[str] = common.Dtype,
          overwrite: bool = common.Overwrite) -> None:
    """Heads as matrices: OV/QK singular value spectra, composition scores against random matrices, channels."""
    from analyses import heads as heads_analysis

    common.check_out(out, overwrite)
    m = common.load(model, device, dtype)
    result = heads_analysis.run(m, None, config)
    result.save(out)
    common.write_log(out)
    s = result.summary()
    for mode in (x.upper() for x in config.modes):
        best = s["composition"][mode]["top_pairs"][0]
        typer.echo(f"{mode}-composition: mean {s['composition'][mode]['mean']:.4f} (random {s['baseline']['mean']:.4f}); "
                   f"strongest {best['sender'][0]}.{best['sender'][1]} -> {best['receiver'][0]}.{best['receiver'][1]} "
                   f"{best['score']:.3f}, components {best['components']} carry {sum(best['shares']):.0%}")
    typer.echo(f"wrote {out}/result.json, report.html, heads.safetensors, log.txt")
