"""Activation patching sweeps: which layers, positions and heads carry a task's clean/corrupted difference.

The method (Vig et al. 2020, Meng et al. 2022 "causal tracing", Wang et al. 2022 for IOI; the conventions of
Heimersheim and Nanda 2024, "How to use and interpret activation patching"). A task gives pairs of prompts of
the same token length that differ in what decides the answer: "When Mary and John went to the store, John gave a
drink to" (answer " Mary", wrong " John") and the same sentence with three other names. The metric is the logit
difference between the answer and the wrong answer at the last position. Run the corrupted prompt, but take one
activation (the residual stream at one layer and position, one attention or MLP output, one head's output) from
the clean run: how much of the clean logit difference comes back says how much of the task's information flows
through that activation. Normalised so that the clean run scores 1 and the corrupted run 0, a cell near 1 is
sufficient on its own (given the rest of the corrupted run); near 0 it carries nothing the corruption changed;
below 0 it pushes the other way. Patching clean into corrupted ("denoising") finds what is sufficient; it does
not find every component that is necessary (backup heads, Wang et al.'s "negative name movers").

Grids: `resid` (`hook_resid_pre`, layer x position: where the information sits as it moves through the layers),
`attn` and `mlp` (each block's output, layer x position: which writes move it), `heads` (each head's `hook_z`,
layer x head, at every position or one). Many patch locations share one forward (`interp.circuits.patching`).

Attribution patching (Nanda 2023) estimates every cell to first order from one backward pass; the Result
reports its Pearson correlation with exact patching per grid, a check on where the linear estimate holds (it
is known to fail on large, saturating changes such as the residual stream at the name positions of layer 0).

Only the items the model solves are kept (`interp.circuits.tasks.solvable`); a task it solves too rarely is refused.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Sequence

import plotly.graph_objects as go
import torch
from torch import Tensor

from interp.circuits import patching as P
from interp.circuits.tasks import TaskSet, solvable
from interp.core.progress import Checkpoint, Progress, digest, model_settings
from interp.core.result import Result
from interp.directions.plots import heatmap
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.model import Model

AXES = {"resid": "position", "attn": "position", "mlp": "position", "heads": "head"}


@dataclass
class Grid:
    """One grid of normalised values [layer, column] with its axis labels."""

    values: Tensor
    layers: list[int]
    columns: list[str]
    column_axis: str  # "position" or "head"

    def to_json(self) -> dict:
        return {"values": [[round(float(v), 6) for v in row] for row in self.values], "rows": "layer",
                "row_labels": self.layers, "columns": self.column_axis, "column_labels": self.columns}


@dataclass
class PatchingResult(Result):
    """Exact and attribution-patching grids of one task on one model."""

    model: str
    task: str
    n_items: int
    solve_rate: float
    clean_logit_diff: float
    corrupted_logit_diff: float
    grids: dict[str, Grid]
    attribution: dict[str, Grid] = field(default_factory=dict)
    correlation: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    title: str = "Activation patching"

    def summary(self) -> dict:
        return {"model": self.model, "task": self.task, "n_items": self.n_items, "solve_rate": self.solve_rate,
                "clean_logit_diff": self.clean_logit_diff, "corrupted_logit_diff": self.corrupted_logit_diff,
                "metric": "logit difference at the last position, normalised: clean = 1, corrupted = 0",
                "attribution_correlation": self.correlation, "timings_s": self.timings,
                "grids": {k: g.to_json() for k, g in self.grids.items()},
                "attribution_grids": {k: g.to_json() for k, g in self.attribution.items()}}

    def figures(self) -> dict[str, go.Figure]:
        figs = {}
        for name, g in self.grids.items():
            figs[name] = _heatmap(g, f"{name}: patched from the clean run (normalised logit difference)")
        for name, g in self.attribution.items():
            figs[f"{name}_attribution"] = _heatmap(g, f"{name}: attribution patching estimate "
                                                      f"(Pearson r = {self.correlation.get(name, float('nan')):.3f})")
        if self.attribution:
            fig = go.Figure()
            for name, g in self.attribution.items():
                fig.add_trace(go.Scatter(x=self.grids[name].values.flatten().tolist(), y=g.values.flatten().tolist(),
                                         mode="markers", name=name))
            fig.update_layout(title="attribution patching vs exact patching", xaxis_title="exact (normalised)",
                              yaxis_title="attribution estimate")
            figs["attribution_vs_exact"] = fig
        return figs


def _heatmap(g: Grid, title: str) -> go.Figure:
    fig = heatmap(g.values, g.columns, g.layers, title, xaxis=g.column_axis, yaxis="layer")
    fig.update_traces(zmid=0, selector=dict(type="heatmap"))
    return fig


def position_labels(model: "Model", ids: Sequence[int], n_positions: int) -> list[str]:
    """Labels of the last `n_positions` tokens of one prompt: the token and its index from the end (unique)."""
    return [f"{model.tokenizer.decode([t])!r} ({p})" for p, t in zip(range(-n_positions, 0), ids[-n_positions:])]


def check_sites(sites: Sequence[str]) -> list[str]:
    """The grid names, validated."""
    sites = [sites] if isinstance(sites, str) else list(sites)
    bad = [s for s in sites if s not in P.GRIDS]
    if bad or not sites:
        raise InterpError(f"unknown patching sites {bad or sites}; choose from {', '.join(P.GRIDS)}")
    return list(dict.fromkeys(sites))


@dataclass
class PatchingConfig:
    """Everything `run` depends on besides the model and the task."""

    sites: tuple[str, ...] = ("resid", "attn", "mlp", "heads")  # grids: resid | attn | mlp | heads
    layers: tuple[int, ...] | None = None  # layers swept (default: every layer)
    n_positions: int | None = None  # the last positions swept (default: every position of the shortest prompt)
    head_position: int | None = None  # patch heads at this position only (negative, from the end); default every position
    attribution: bool = True  # also estimate every grid by attribution patching
    rows_per_forward: int = 64  # patched rows per forward
    min_solve_rate: float = 0.5  # refuse a task the model solves less often than this


def run(model: "Model", data: TaskSet, config: PatchingConfig | None = None,
        checkpoint: str | os.PathLike | Checkpoint | None = None) -> PatchingResult:
    """Patching grids of the task `data` on `model`: exact (batched) and, with `config.attribution`,
    attribution-patching estimates with their correlation (see `PatchingConfig`).

    `checkpoint`: a folder where the run records each forward of the sweeps and the attribution estimates as it
    goes (`interp.core.progress`); a rerun with the same folder and settings resumes there and returns the
    Result an uninterrupted run returns; other settings are refused."""
    cfg = config or PatchingConfig()
    task, layers, n_positions = data, cfg.layers, cfg.n_positions
    head_position, attribution, rows_per_forward, min_solve_rate = (cfg.head_position, cfg.attribution,
                                                                     cfg.rows_per_forward, cfg.min_solve_rate)
    sites = check_sites(cfg.sites)
    layer_list = list(range(model.n_layers)) if layers is None else [model.check_layer(int(i)) for i in layers]
    if head_position is not None and (not isinstance(head_position, int) or head_position >= 0):
        raise InterpError(f"head_position must be a negative index counted from the end (e.g. -1), got {head_position!r}")
    start = time.perf_counter()
    kept = solvable(model, task, min_solve_rate)
    tokens = kept.tokens(model)
    shortest = min(len(r) for r in tokens.clean)
    n_positions = shortest if n_positions is None else int(n_positions)
    if not 1 <= n_positions <= shortest:
        raise InterpError(f"n_positions={n_positions}: the shortest prompt has {shortest} tokens; choose 1..{shortest}")
    if head_position is not None and -head_position > shortest:
        raise InterpError(f"head_position {head_position} is outside the shortest prompt ({shortest} tokens)")
    progress = Progress.open(checkpoint, "patching", {"config": asdict(cfg), "model": model_settings(model),
                                                      "task": digest(data)})
    prepared = [s for name in sites for s in model.sites([f"blocks.{i}.{P.GRIDS[name]}" for i in layer_list])]
    runs = P.prepare(model, tokens, prepared)
    timings = {"prepare": time.perf_counter() - start}
    labels = position_labels(model, tokens.clean[0], n_positions)
    grids, estimates, correlation, all_locs = {}, {}, {}, {}
    for name in sites:
        locs = all_locs[name] = P.grid_locations(model, name, n_positions, layer_list, head_position)
        cols = labels if name != "heads" else [str(h) for h in range(model.n_heads)]
        axis = AXES[name] if name != "heads" or head_position is None else f"head (at position {head_position})"
        t = time.perf_counter()
        exact = P.sweep(model, runs, locs, rows_per_forward=rows_per_forward, progress=progress, key=f"sweep {name}")
        timings[name] = time.perf_counter() - t
        grids[name] = Grid(exact.view(len(layer_list), len(cols)), layer_list, cols, axis)
    if attribution:  # every grid from one backward pass
        t = time.perf_counter()
        every = [loc for locs in all_locs.values() for loc in locs]
        est = torch.tensor(progress.unit("attribution", lambda: P.attribution(model, runs, every).tolist()),
                           dtype=torch.float32).split([len(locs) for locs in all_locs.values()])
        timings["attribution"] = time.perf_counter() - t
        for name, e in zip(all_locs, est):
            g = grids[name]
            estimates[name] = Grid(e.view(g.values.shape), g.layers, g.columns, g.column_axis)
            correlation[name] = P.pearson(g.values, e)
    timings["total"] = time.perf_counter() - start
    return PatchingResult(model.name, task.name, len(kept), float(kept.meta.get("solve_rate", 1.0)),
                          float(runs.clean_ld.mean()), float(runs.corrupted_ld.mean()), grids, estimates, correlation,
                          timings)
