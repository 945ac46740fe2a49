"""Figures for probe reports: accuracy against depth."""

from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interp.core.result import caption

if TYPE_CHECKING:
    from probes.linear import ProbeReport

_COLORS = {"logistic": "#1f77b4", "mass_mean": "#d62728"}


def accuracy_figure(report: "ProbeReport") -> go.Figure:
    """Test (solid) and train (dotted) accuracy per layer for each probe kind, with the chance level.

    Per-head reports ([layer, head] accuracies) are shown as one heatmap of test accuracy per kind.
    """
    first = report.test_accuracy[report.kinds[0]]
    if first and isinstance(first[0], list):
        fig = make_subplots(rows=1, cols=len(report.kinds), subplot_titles=[f"{k}: test accuracy" for k in report.kinds])
        for i, kind in enumerate(report.kinds):
            fig.add_trace(go.Heatmap(z=report.test_accuracy[kind], y=report.layers, zmin=0, zmax=1, colorscale="Viridis",
                                     showscale=i == 0, colorbar={"title": "accuracy"}), row=1, col=i + 1)
            fig.update_xaxes(title_text="head", row=1, col=i + 1)
            fig.update_yaxes(title_text="layer", row=1, col=i + 1)
        fig.update_layout(title=f"Per-head probe accuracy (n_train={report.n_train}, n_test={report.n_test})")
        return caption(fig, "Held-out accuracy of one linear probe per attention head (rows: layers, columns: heads). "
                            "A bright cell is a head whose output tells the two classes apart linearly; with few "
                            "test examples, accuracies move in steps of 1 / n_test.")
    fig = go.Figure()
    for kind in report.kinds:
        color = _COLORS.get(kind)
        fig.add_trace(go.Scatter(x=report.layers, y=report.test_accuracy[kind], mode="lines+markers", name=f"{kind} (test)",
                                 line={"color": color}))
        fig.add_trace(go.Scatter(x=report.layers, y=report.train_accuracy[kind], mode="lines", name=f"{kind} (train)",
                                 line={"color": color, "dash": "dot"}))
    fig.add_hline(y=report.chance, line_dash="dash", line_color="gray", annotation_text="chance (majority class)")
    fig.update_layout(title=f"Linear probe accuracy by layer (n_train={report.n_train}, n_test={report.n_test})",
                      xaxis_title="layer", yaxis_title="accuracy", yaxis_range=[0, 1.05], template="plotly_white")
    return caption(fig, "One linear probe per layer: held-out (solid) and training (dotted) accuracy, and the "
                        "majority-class rate (dashed). Where the held-out accuracy is near 1 the two classes are "
                        "linearly separable at that layer; training far above held-out means the probe overfits "
                        "(too few examples for the width).")
