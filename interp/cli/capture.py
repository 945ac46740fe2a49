"""`interp capture`: activations of a prompt file, saved to a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interp.cli import common


def capture(model: str = common.Model,
            prompts: Path = typer.Option(..., help="prompt file (.txt, .csv, .json, .jsonl)"),
            sites: list[str] = typer.Option(["hook_resid_post"], help="site names, e.g. blocks.10.hook_resid_post or a "
                                            "bare kind for every layer"),
            positions: str = typer.Option("last", help="last | eoi | all | mean"),
            backend: str = typer.Option("hooks", help="hooks | transformer_lens | nnsight"),
            out: Path = typer.Option(..., "--out", help="output folder: activations.safetensors + activations.json, "
                                     "log.txt (new or empty unless --overwrite)"),
            batch_size: Optional[int] = common.BatchSize, system: str = common.System,
            device: Optional[str] = common.Device, dtype: Optional[str] = common.Dtype,
            overwrite: bool = common.Overwrite) -> None:
    """Capture activations for a prompt file."""
    from interp.data.prompts import read_prompts

    common.check_out(out, overwrite)
    items = read_prompts(prompts)  # bad inputs fail before the model loads
    spec = common.system_value(system)
    m = common.load(model, device, dtype, backend)
    acts = m.capture(items, sites, positions=positions, batch_size=batch_size or 16, system=spec)
    acts.save(out)
    common.write_log(out)
    typer.echo(f"wrote {len(acts)} prompts x {len(acts.acts)} sites to {out}")
