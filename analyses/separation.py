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
    positive, negative, batch_size, test_size, seed = data.positive, data.negative, cfg.batch_size, cfg.test_size, cfg.seed
    if not positive or not negative:
        raise InterpError("separation needs prompts of both classes; one set is empty")
    acts = model.capture(list(positive) + list(negative), "hook_resid_post", positions="last", batch_size=batch_size,
                         labels=[1] * len(positive) + [0] * len(negative), progress=True)
    X = acts.stack("hook_resid_post")
    y = torch.tensor(acts.labels, dtype=torch.bool)
    layers = acts.layers("hook_resid_post")
    report = probes.evaluate(X, y, test_size=test_size, seed=seed, layers=layers, provenance={"model": model.fingerprint})
    return SeparationResult(layers, report, mean_separation(X, y).tolist())
