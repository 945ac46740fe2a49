"""Small plotly figure builders shared by the analyses."""

from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go
import torch
from torch import Tensor

from interp.core.result import caption as set_caption
from interp.directions.estimators import pca

GAP_COLOR = "#bdbdbd"  # heat-map cells with no value (NaN): grey, never a colour of the scale


def heatmap(values: Tensor, x: Sequence, y: Sequence, title: str, xaxis: str = "layer", yaxis: str = "position",
            colorscale: str = "RdBu_r", mark: tuple[int, int] | None = None, gaps: str | None = None,
            caption: str | None = None) -> go.Figure:
    """A [len(y), len(x)] heatmap; `mark` = (row, col) draws a box around the chosen cell.

    NaN cells are drawn grey (`GAP_COLOR`), never in a colour of the scale; `gaps` names what they mean (e.g.
    "not scored"), shown in the legend as a grey square and in the hover text. `caption` is attached to the
    figure (`interp.core.result.caption`): reports print it under the figure."""
    nan = torch.isnan(values.float())
    z = [[None if bad else float(v) for v, bad in zip(row, row_nan)] for row, row_nan in zip(values.tolist(), nan.tolist())]
    fig = go.Figure(go.Heatmap(z=z, x=list(x), y=[str(v) for v in y], colorscale=colorscale, hoverongaps=False,
                               colorbar=dict(len=0.8, y=0.4)))
    if mark is not None:
        fig.add_trace(go.Scatter(x=[list(x)[mark[1]]], y=[str(list(y)[mark[0]])], mode="markers",
                                 marker=dict(symbol="square-open", size=18, color="black"), name="chosen"))
    if bool(nan.any()):
        fig.update_layout(plot_bgcolor=GAP_COLOR)
        if gaps:
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"{gaps} (grey)",
                                     marker=dict(symbol="square", size=12, color=GAP_COLOR)))
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis, xaxis_showgrid=False, yaxis_showgrid=False,
                      xaxis_zeroline=False, yaxis_zeroline=False,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))
    if caption:
        set_caption(fig, caption)
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
