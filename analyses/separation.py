"""Per-layer separation of two prompt sets: where in depth does the model tell them apart?

Capture the residual stream (`hook_resid_post`, last token) of both sets at every layer, then fit
linear probes on a stratified train split (logistic regression and the mass-mean probe of Marks & Tegmark)
and report held-out accuracy per layer, together with the distance between the class means in units of the
pooled within-class spread (a one-dimensional Fisher-style separation along the mean difference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import Tensor

import probes
from interp.core.result import Result
from interp.directions.estimators import class_means
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.activations import Activations
    from interp.core.model import Model


@dataclass
class SeparationResult(Result):
    layers: list[int]
    report: "probes.ProbeReport"
    separation: list[float]  # |mu1 - mu0| projected, over pooled std along that axis
    title: str = "Per-layer separation"

    def summary(self) -> dict:
        return {"layers": self.layers, "probes": self.report.to_dict(), "mean_separation": self.separation}

    def figures(self) -> dict[str, go.Figure]:
        fig = make_subplots(specs=[[{"secondary_y": True}]])
        for tr in self.report.figure().data:
            fig.add_trace(tr, secondary_y=False)
        fig.add_trace(go.Scatter(x=self.layers, y=self.separation, name="mean separation (d')", mode="lines+markers",
                                 line=dict(dash="dot")), secondary_y=True)
        fig.update_layout(title="harmful vs harmless: held-out probe accuracy and mean separation per layer",
                          xaxis_title="layer")
        fig.update_yaxes(title_text="held-out accuracy", secondary_y=False)
        fig.update_yaxes(title_text="d' along the mean difference", secondary_y=True)
        return {"separation": fig}


def mean_separation(X: Tensor, y: Tensor) -> Tensor:
    """d' along the mean difference: |mu1 - mu0| / pooled std of the projections, per layer ([n, L, d] -> [L])."""
    X = X.double()
    mu0, mu1 = class_means(X, y)
    axis = (mu1 - mu0) / (mu1 - mu0).norm(dim=-1, keepdim=True)
    proj = (X * axis).sum(-1)  # [n, L]
    pooled = ((proj[y].var(0) + proj[~y].var(0)) / 2).sqrt()
    return ((proj[y].mean(0) - proj[~y].mean(0)) / pooled).float()


@dataclass
class SeparationData:
    positive: Sequence[str]  # e.g. harmful prompts
    negative: Sequence[str]  # e.g. harmless prompts


@dataclass
class SeparationConfig:
    batch_size: int = 16  # prompts per capture forward
    test_size: float = 0.25  # held-out share of the probes' prompts
    seed: int = 0


def run(model: "Model", data: SeparationData, config: SeparationConfig | None = None) -> SeparationResult:
    """Capture both sets at every layer and measure their linear separation per layer."""
    cfg = config or SeparationConfig()
    positive, negative = data.positive, data.negative
    if not positive or not negative:
        raise InterpError("separation needs prompts of both classes; one set is empty")
    acts = model.capture(list(positive) + list(negative), "hook_resid_post", positions="last", batch_size=cfg.batch_size,
                         labels=[1] * len(positive) + [0] * len(negative), progress=True)
    return from_activations(acts, cfg)


def from_activations(acts: "Activations", config: SeparationConfig | None = None) -> SeparationResult:
    """The same measurement on activations already captured (no forward pass): `hook_resid_post` at every
    captured layer, labels 1 (positive) and 0. With several positions per prompt (positions="eoi") the last one
    is used, which is the last token of a chat-formatted prompt, as `run` captures. `config.batch_size` is unused.

    Lets an analysis that captures every layer anyway (`refusal.run` with `keep_activations=True`) share its
    capture instead of a second pass."""
    cfg = config or SeparationConfig()
    X = acts.stack("hook_resid_post")  # [n, layer, d], or [n, layer, position, d]
    if X.dim() == 4:
        X = X[:, :, -1]
    labels = acts.label_array()
    if set(labels) != {0, 1}:  # True and False compare equal to 1 and 0
        raise InterpError(f"separation needs labels 1 (positive) and 0 (negative), got {sorted(set(map(str, labels)))}")
    y = torch.tensor(labels, dtype=torch.bool)
    layers = acts.layers("hook_resid_post")
    report = probes.evaluate(X, y, test_size=cfg.test_size, seed=cfg.seed, layers=layers, provenance={"model": acts.model})
    return SeparationResult(layers, report, mean_separation(X, y).tolist())
