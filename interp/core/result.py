"""`Result`: what every analysis returns: a JSON summary, plotly figures, and artifacts saved to a folder.

It lives in the core so that anything in `interp` (the attack summary) and in `analyses` returns the same
thing. In Jupyter a Result displays itself (`_repr_html_`): a table of its summary values, then every figure,
interactive. No network is needed: plotly.js (4-5 MB) is embedded in the first Result displayed by a Python
process and the later ones use it, as plotly's own notebook renderer does; so a saved notebook shows its
figures as long as that first output is kept. `report.html` (from `save`) always embeds it: it stands alone.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from interp.errors import InterpError
from interp.io import write_json, write_text

MAX_LIST = 8  # lists longer than this show as "[n items]" in the notebook table
_plotlyjs_sent = False  # whether this process has already embedded plotly.js in a notebook output


class Result:
    """Subclasses implement `summary()` (JSON-able dict) and `figures()` (name -> plotly Figure), and may
    extend `save_artifacts(directory)` for tensors (safetensors) and other files."""

    @property
    def title(self) -> str:
        """The report's heading: subclasses set it as a class attribute (`title = "..."`) or a property."""
        return "Result"

    def summary(self) -> dict:
        raise NotImplementedError

    def figures(self) -> dict[str, go.Figure]:
        raise NotImplementedError

    def figure(self, name: str | None = None) -> go.Figure:
        """One figure: the named one, or the first."""
        figs = self.figures()
        if not figs:
            raise InterpError(f"this {type(self).__name__} has no figures")
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

    def _repr_html_(self) -> str:
        """Jupyter's rich display: the title, a table of the summary's values, then every figure."""
        global _plotlyjs_sent
        figures = self.figures()
        parts = [f"<h3>{html.escape(self.title)}</h3>", summary_table(self.summary())]
        parts += figure_html(figures, embed_plotlyjs=not _plotlyjs_sent)
        _plotlyjs_sent = _plotlyjs_sent or bool(figures)
        return "\n".join(parts)


def summary_table(summary: dict) -> str:
    """An HTML table of a summary: nested dicts flattened to dotted keys, long lists shortened to a count."""
    rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
                   f"{html.escape(_short(v))}</td></tr>" for k, v in _flatten(summary))
    return f"<table>{rows}</table>"


def figure_html(figures: dict[str, go.Figure], embed_plotlyjs: bool = True) -> list[str]:
    """Each figure as an HTML fragment under its name; plotly.js is embedded (with the first one) if asked."""
    parts = []
    for i, (name, fig) in enumerate(figures.items()):
        parts.append(f"<h4>{html.escape(name)}</h4>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=embed_plotlyjs and i == 0))
    return parts


def report_html(title: str, figures: dict[str, go.Figure], summary: dict | None = None) -> str:
    """One self-contained HTML page holding every figure (plotly.js embedded once, so it works offline)."""
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    parts += figure_html(figures)
    if summary is not None:
        text = json.dumps(summary, indent=2, default=str)
        parts.append("<h2>summary</h2><pre>" + html.escape(text, quote=False) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += _flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) > MAX_LIST:
        return f"[{len(value)} items]"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 200 else text[:199] + "…"


__all__ = ["Result", "report_html", "summary_table", "figure_html"]
