"""`Result`: what every analysis returns: a JSON summary, plotly figures, and artifacts saved to a folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import plotly.graph_objects as go

from interp.errors import InterpError
from interp.io import write_json, write_text


class Result:
    """Subclasses implement `summary()` (JSON-able dict) and `figures()` (name -> plotly Figure), and may
    extend `save_artifacts(directory)` for tensors (safetensors) and other files."""

    title: str = "Result"

    def summary(self) -> dict:
        raise NotImplementedError

    def figures(self) -> dict[str, go.Figure]:
        raise NotImplementedError

    def figure(self, name: str | None = None) -> go.Figure:
        """One figure: the named one, or the first."""
        figs = self.figures()
        if name is None:
            return next(iter(figs.values()))
        if name not in figs:
            raise InterpError(f"no figure named {name!r}; figures: {', '.join(figs)}")
        return figs[name]

    def to_json(self) -> str:
        return json.dumps(self.summary(), indent=2, default=str)

    def save_artifacts(self, directory: Path) -> None:
        """Extra files beside result.json and report.html (none by default)."""

    def save(self, directory: str | os.PathLike) -> Path:
        """Write result.json, report.html (every figure, interactive) and the artifacts into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.save_artifacts(directory)
        write_json(directory / "result.json", json.loads(self.to_json()))
        write_text(directory / "report.html", report_html(self.title, self.figures(), self.summary()))
        return directory


def report_html(title: str, figures: dict[str, go.Figure], summary: dict | None = None) -> str:
    """One self-contained HTML page holding every figure (plotly.js embedded once, so it works offline)."""
    parts = [f"<html><head><meta charset='utf-8'><title>{title}</title></head><body>", f"<h1>{title}</h1>"]
    for i, (name, fig) in enumerate(figures.items()):
        parts.append(f"<h2>{name}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    if summary is not None:
        text = json.dumps(summary, indent=2, default=str)
        parts.append("<h2>summary</h2><pre>" + text.replace("&", "&amp;").replace("<", "&lt;") + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
