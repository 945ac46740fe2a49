"""`interp steer` (generation under a direction or a saved intervention) and `interp ablate` (a weight-edited
checkpoint). steer writes one JSONL file (--out FILE); ablate writes a checkpoint folder (--export)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from interp.cli import common


class Mode(str, Enum):  # noqa: UP042 (typer's choices)
    ablate = "ablate"
    add = "add"
    none = "none"


def steer(
          model: str = common.Model,
          direction: Optional[Path] = typer.Option(None, help="a direction folder written by `interp directions extract`"),
          mode: Mode = typer.Option(Mode.none, help="ablate | add | none (the unsteered baseline, same path)"),
          intervention: Optional[Path] = typer.Option(None, help="a saved intervention folder (e.g. `interp truthful fit "
                                                      "--out DIR`), applied with or instead of --direction"),
          layer: Optional[int] = typer.Option(None, help="layer for --mode add (default: the direction's layer; "
                                              "required when it names none)"),
          alpha: Optional[float] = typer.Option(None, help="scale of the added vector, in units of the mean difference "
                                                "(default: the direction's calibrated addition_alpha, else 1)"),
          prompts: Path = typer.Option(..., help="prompt file"),
          max_new_tokens: int = typer.Option(64),
          out: Path = typer.Option(..., help="output JSONL file, one object per prompt"),
          batch_size: Optional[int] = common.BatchSize,
          system: str = typer.Option(common.default_system(), "--system", help=common.System.help + " (a direction "
                                     "made under another says so)"),
          device: Optional[str] = common.Device, dtype: Optional[str] = common.Dtype) -> None:
    """Greedy, batched generation with the direction ablated or added (or neither), and/or a saved intervention."""
    import json

    from interp.core.interventions import Ablate, Add, Intervention
    from interp.core.subspace import Direction, Subspace
    from interp.core.system import system_record
    from interp.data.prompts import read_prompts
    from interp.errors import InterpError
    from interp.io import write_text
    from interp.steering.head_steering import HeadSteering

    items = read_prompts(prompts)
    if mode != Mode.none and direction is None:
        raise InterpError(f"--mode {mode.value} needs --direction (a folder written by `interp directions extract`)")
    if direction is not None:
        Subspace.load(direction)  # broken files fail before the model loads
    if intervention is not None:
        HeadSteering.load(intervention)
    common.system_value(system)
    m = common.load(model, device, dtype)
    d = Subspace.load(direction, model=m) if direction is not None else None
    if alpha is None:
        alpha = float(d.provenance.get("addition_alpha", 1.0)) if d is not None else 1.0
    ivs: list[Intervention] = []
    if mode == Mode.ablate:
        assert d is not None  # --mode ablate needs --direction, checked above
        ivs = [Ablate(d)]
    elif mode == Mode.add:
        assert d is not None  # --mode add needs --direction, checked above
        if not isinstance(d, Direction):
            raise InterpError(f"--mode add needs a direction (k = 1); {direction} holds a {d.k}-dimensional subspace")
        layer = d.layer_for(m, layer, "--layer ")
        ivs = [Add(d, layer, alpha)]
    if intervention is not None:
        ivs.append(HeadSteering.load(intervention, model=m))
    made_with = d.provenance.get("system") if d is not None else None
    if made_with is not None and made_with != system_record(common.system_value(system)):
        typer.secho(f"note: the direction was made with --system {made_with!r} and these prompts use "
                    f"{system!r}; pass --system {made_with!r} to steer under the same formatting", err=True)
    responses = m.generate(items, max_new_tokens=max_new_tokens, batch_size=batch_size or 16, interventions=ivs,
                           progress=True, system=common.system_value(system))
    lines = [json.dumps({"prompt": p, "response": r, "mode": mode.value, "layer": layer, "alpha": alpha,
                         "intervention": str(intervention) if intervention is not None else None,
                         "system": system_record(common.system_value(system))})
             for p, r in zip(items, responses)]
    write_text(out, "\n".join(lines) + "\n")
    typer.echo(f"wrote {len(lines)} responses to {out}")


def ablate(model: str = common.Model,
           direction: Path = typer.Option(..., help="a direction folder"),
           export: Path = typer.Option(..., help="output folder for the orthogonalised HF checkpoint (new or empty)"),
           device: Optional[str] = common.Device, dtype: Optional[str] = common.Dtype) -> None:
    """Write a weight-orthogonalised checkpoint (the direction removed from every residual write)."""
    from interp.core.subspace import Subspace
    from interp.steering.orthogonalize import export_orthogonalized

    m = common.load(model, device, dtype)
    typer.echo(f"wrote {export_orthogonalized(m, Subspace.load(direction, model=m), export)} (loads with plain transformers)")
