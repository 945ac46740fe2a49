"""Small plotly figure builders shared by the analyses."""

from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go
import torch
from torch import Tensor

from interp.directions.estimators import pca


def heatmap(values: Tensor, x: Sequence, y: Sequence, title: str, xaxis: str = "layer", yaxis: str = "position",
            colorscale: str = "RdBu_r", mark: tuple[int, int] | None = None) -> go.Figure:
    """A [len(y), len(x)] heatmap; `mark` = (row, col) draws a box around the chosen cell."""
    fig = go.Figure(go.Heatmap(z=values.tolist(), x=list(x), y=[str(v) for v in y], colorscale=colorscale))
    if mark is not None:
        fig.add_trace(go.Scatter(x=[list(x)[mark[1]]], y=[str(list(y)[mark[0]])], mode="markers",
                                 marker=dict(symbol="square-open", size=18, color="black"), name="chosen"))
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis)
    return fig


def pca_scatter(groups: dict[str, Tensor], title: str, texts: dict[str, Sequence[str]] | None = None) -> go.Figure:
    """Project every group's rows ([n, d]) onto the top-2 principal components of all rows together."""
    fitted = pca(torch.cat(list(groups.values())), 2)
    fig = go.Figure()
    for name, x in groups.items():
        xy = fitted.transform(x)
        fig.add_trace(go.Scatter(x=xy[:, 0].tolist(), y=xy[:, 1].tolist(), mode="markers", name=name,
                                 text=list(texts[name]) if texts else None))
    fig.update_layout(title=title, xaxis_title="PC1", yaxis_title="PC2")
    return fig


def histograms(groups: dict[str, Tensor], title: str, xaxis: str) -> go.Figure:
    fig = go.Figure([go.Histogram(x=v.tolist(), name=k, opacity=0.6) for k, v in groups.items()])
    fig.update_layout(title=title, xaxis_title=xaxis, barmode="overlay")
    return fig
