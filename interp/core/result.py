"""`Result`: what every analysis returns: a JSON summary, plotly figures, and artifacts saved to a folder.

It lives in the core so that anything in `interp` (the attack summary) and in `analyses` returns the same
thing. In Jupyter a Result displays itself (`_repr_html_`): a table of its summary values, then every figure,
interactive, each with its caption (`caption`). `report.html` has the same order: the summary table first, the
figures, then the whole summary as JSON, folded; figures fixed wider than a laptop screen are fitted to the page.
No network is needed: plotly.js (4-5 MB) is embedded in the first Result displayed by a Python process and the
later ones use it, as plotly's own notebook renderer does; so a saved notebook shows its figures as long as that
first output is kept. `report.html` (from `save`) always embeds it: it stands alone.
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
MAX_WIDTH, MAX_HEIGHT = 1000, 800  # pixels: a figure fixed wider or taller is fitted to the page (`fit_screen`)
DEFAULT_HEIGHT = 450  # pixels, for a figure that sets no height
_plotlyjs_sent = False  # whether this process has already embedded plotly.js in a notebook output


class Result:
    """Subclasses implement `summary()` (JSON-able dict) and `figures()` (name -> plotly Figure), and may
    extend `save_artifacts(directory)` for tensors (safetensors) and other files.

    backend_check: set by `interp.core.verify.verify` (the largest disagreement with the other backends); it is
    added to the summary that the JSON, the report and the notebook display show (`full_summary`)."""

    backend_check: dict | None = None

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

    def full_summary(self) -> dict:
        """`summary()`, plus the cross-backend check when one was made."""
        summary = self.summary()
        return summary if self.backend_check is None else {**summary, "backend_check": self.backend_check}

    def to_json(self) -> str:
        return json.dumps(self.full_summary(), indent=2, default=str)

    def save_artifacts(self, directory: Path) -> None:
        """Extra files beside result.json and report.html (none by default)."""

    def save(self, directory: str | os.PathLike) -> Path:
        """Write result.json, report.html (every figure, interactive) and the artifacts into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.save_artifacts(directory)
        write_json(directory / "result.json", json.loads(self.to_json()))
        write_text(directory / "report.html", report_html(self.title, self.figures(), self.full_summary()))
        return directory

    def _repr_html_(self) -> str:
        """Jupyter's rich display: the title, a table of the summary's values, then every figure and its caption."""
        global _plotlyjs_sent
        figures = self.figures()
        parts = [f"<h3>{html.escape(self.title)}</h3>", summary_table(self.full_summary())]
        parts += figure_html(figures, embed_plotlyjs=not _plotlyjs_sent)
        _plotlyjs_sent = _plotlyjs_sent or bool(figures)
        return "\n".join(parts)


def summary_table(summary: dict, css_class: str | None = None) -> str:
    """An HTML table of a summary: nested dicts flattened to dotted keys, long lists shortened to a count."""
    rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
                   f"{html.escape(_short(v))}</td></tr>" for k, v in _flatten(summary))
    return f"<table class='{css_class}'>{rows}</table>" if css_class else f"<table>{rows}</table>"


def caption(fig: go.Figure, text: str) -> go.Figure:
    """Attach a caption to `fig` (kept in `fig.layout.meta["caption"]`): reports and notebook displays print it
    under the figure. Returns the figure, for chaining."""
    meta = dict(fig.layout.meta) if isinstance(fig.layout.meta, dict) else {}
    fig.update_layout(meta={**meta, "caption": text})
    return fig


def figure_caption(fig: go.Figure) -> str | None:
    """The caption `caption` attached to `fig`, if any."""
    meta = fig.layout.meta
    return meta.get("caption") if isinstance(meta, dict) else None


def fit_screen(fig: go.Figure) -> go.Figure:
    """`fig` sized for a laptop screen: a copy without a fixed width above `MAX_WIDTH` or height above
    `MAX_HEIGHT` pixels (the page's width then sets it); `fig` itself when it already fits."""
    width, height = fig.layout.width, fig.layout.height
    if (width is None or width <= MAX_WIDTH) and (height is None or height <= MAX_HEIGHT):
        return fig
    fitted = go.Figure(fig)
    fitted.update_layout(width=None if width is not None and width > MAX_WIDTH else width,
                         height=min(height, MAX_HEIGHT) if height is not None else None)
    return fitted


def figure_html(figures: dict[str, go.Figure], embed_plotlyjs: bool = True) -> list[str]:
    """Each figure as an HTML fragment under its name, sized for a laptop screen (`fit_screen`, the page's width
    by default), with its caption under it; plotly.js is embedded (with the first one) if asked."""
    parts = []
    for i, (name, fig) in enumerate(figures.items()):
        parts.append(f"<h4>{html.escape(name)}</h4>")
        parts.append(fit_screen(fig).to_html(full_html=False, include_plotlyjs=embed_plotlyjs and i == 0,
                                             default_width="100%", default_height=f"{DEFAULT_HEIGHT}px",
                                             config={"responsive": True, "displaylogo": False}))
        text = figure_caption(fig)
        if text:
            parts.append(f"<p class='caption'>{html.escape(text)}</p>")
    return parts


_STYLE = """<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 1100px; margin: 1.5em auto;
       padding: 0 1em; color: #222; }
div.summary { max-height: 40vh; overflow-y: auto; border: 1px solid #ddd; padding: 0 0.5em; margin-bottom: 1em; }
table.summary { border-collapse: collapse; font-size: 0.9em; }
table.summary th, table.summary td { border-bottom: 1px solid #ddd; padding: 0.2em 0.8em 0.2em 0; vertical-align: top; }
p.caption { color: #444; font-size: 0.9em; margin: 0.2em 0 1.5em 0; max-width: 60em; }
details pre { font-size: 0.8em; overflow-x: auto; }
</style>"""


def report_html(title: str, figures: dict[str, go.Figure], summary: dict | None = None) -> str:
    """One self-contained HTML page (plotly.js embedded once, so it works offline): the title, the summary's
    values as a table (its settings, `config`, left to the JSON), every figure with its caption, then the whole
    summary as JSON (folded)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>", _STYLE, "</head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if summary is not None:  # the settings (a summary's "config") are in the folded JSON below, not in the table
        table = summary_table({k: v for k, v in summary.items() if k != "config"}, css_class="summary")
        parts.append(f"<h2>summary</h2><div class='summary'>{table}</div>")  # scrolls: the figures stay in view
    if figures:
        parts.append("<h2>figures</h2>")
    parts += figure_html(figures)
    if summary is not None:
        text = json.dumps(summary, indent=2, default=str)
        parts.append("<details><summary>the whole summary (result.json)</summary><pre>"
                     + html.escape(text, quote=False) + "</pre></details>")
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
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 200 else text[:199] + "…"


__all__ = ["Result", "report_html", "summary_table", "figure_html", "caption", "figure_caption", "fit_screen"]
