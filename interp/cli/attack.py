"""`interp attack ssr|gcg ...`: the typer command, for the main CLI to register (`app.command()(attack)`).

The one exception to the output convention (`interp.cli.common`): --out is the run's JSONL log, and an existing
log is resumed (behaviours already judged are skipped), not refused; there is no --overwrite.

A command-line module: it sits on top of every package, so it may run `analyses.rerouting.attack` (which loads
or fits the probes and directions SSR needs); the core attack in `interp.attacks.run` takes them as values.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from interp.cli import common
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.attacks.run import Summary


def _layers(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise InterpError(f"--layers must be integers separated by commas or spaces, e.g. '8,12'; got {text!r}") from None


def attack_cli(method: str, model: str, behaviors: Path, max_behaviors: int | None, template: str | None,
               layers: list[int] | None, steps: int | None, config: Path | None, out: Path, **extra: Any) -> "Summary":
    """What `interp attack ssr|gcg` runs: load everything, check it, attack, print the summary table."""
    from analyses.rerouting import attack as run_attack
    from interp.attacks.run import AttackConfig
    from interp.data.prompts import read_behaviors

    if max_behaviors is not None and max_behaviors < 1:
        raise InterpError(f"--max-behaviors must be a positive integer, got {max_behaviors}")
    progress = extra.pop("progress", True)
    device, dtype = extra.pop("device", None), extra.pop("dtype", None)
    cfg = AttackConfig.build(config, method=method, template=template, layers=list(layers) if layers else None,
                             steps=steps, **extra)
    items = read_behaviors(behaviors)[:max_behaviors]
    m = common.load(model, device, dtype)
    summary = run_attack(m, items, out, cfg, progress=progress is not False)
    summary.print()
    return summary


def attack(
    method: str = typer.Argument(..., help="ssr (subspace rerouting) or gcg (the baseline)"),
    model: str = common.Model,
    behaviors: Path = typer.Option(..., "--behaviors", help="behaviour file (.csv/.json/.jsonl/.txt)"),
    out: Path = typer.Option(..., "--out", help="run log (JSONL); an existing one is resumed"),
    max_behaviors: Optional[int] = typer.Option(None, "--max-behaviors", help="attack only the first N behaviours"),
    template: Optional[str] = typer.Option(None, "--template", help="prompt with {behavior} and [MASK] tokens"),
    layers: Optional[str] = typer.Option(None, "--layers", help="SSR target layers, e.g. '8,12'"),
    steps: Optional[int] = typer.Option(None, "--steps", help="search steps per behaviour"),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file of attack settings"),
    loss: Optional[str] = typer.Option(None, "--loss", help="SSR loss: probe, steering or attention"),
    candidates: Optional[int] = typer.Option(None, "--candidates", help="candidates per behaviour per step"),
    parallel: Optional[int] = typer.Option(None, "--parallel", help="behaviours attacked together"),
    max_seconds: Optional[float] = typer.Option(None, "--max-seconds", help="wall-time cap per behaviour"),
    probes: Optional[Path] = typer.Option(None, "--probes", help="folder of saved probes (probe-SSR)"),
    directions: Optional[Path] = typer.Option(None, "--directions", help="folder of layer_<i> directions (steering-SSR)"),
    seed: Optional[int] = common.Seed,
    preset: Optional[str] = typer.Option(None, "--preset", help="search preset: default, or nanogcg (nanoGCG's "
                                         "defaults: 20 tokens, width 512, top-k 256, judged at the end)"),
    forwards: Optional[int] = typer.Option(None, "--forwards", help="candidate forwards per behaviour (budget)"),
    attempts: Optional[int] = typer.Option(None, "--attempts", help="judged attempts per behaviour, N, the same for "
                                           "every method and preset: no judging until the budget is spent, then the "
                                           "N lowest-loss suffixes (default: the preset's schedule, N varies)"),
    device: Optional[str] = common.Device,
    dtype: Optional[str] = common.Dtype,
) -> None:
    """Attack the behaviours of a file with subspace rerouting (SSR) or GCG, logging every judged attempt; the
    summary gives best-of-N success (any of a behaviour's N judged attempts) beside single-attempt success."""
    attack_cli(method, model, behaviors, max_behaviors, template, _layers(layers), steps, config, out, loss=loss,
               candidates=candidates, parallel=parallel, max_seconds=max_seconds,
               probes=str(probes) if probes else None, directions=str(directions) if directions else None, seed=seed,
               preset=preset, max_forwards=forwards, attempts=attempts, device=device, dtype=dtype)
