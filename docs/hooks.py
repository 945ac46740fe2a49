"""MkDocs hooks (mkdocs.yml `hooks:`): pages made at build time from the repository, never committed.

- tutorials/<name>.md: each notebook of notebooks/ converted to Markdown by nbconvert, with its outputs (text,
  tables, images; plotly's HTML outputs are kept as HTML): the copy `make test-slow` executed into out/notebooks/
  when there is one (run `make test-slow` before `make docs` for tutorials with every figure), else the stored one;
- reference/<package>.md: the API reference, one page per package, one `::: module` block per module, rendered
  from the docstrings by mkdocstrings.
"""

from __future__ import annotations

import json
import pkgutil
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "out" / "notebooks"  # written by `make test-slow` (tests/test_notebooks.py)
PLOTLY = "application/vnd.plotly.v1+json"
PLOTLY_JS = "assets/plotly.min.js"  # plotly.js, from the installed plotly, once for every page (mkdocs.yml)
# reference page -> (title, the packages whose modules it lists)
REFERENCE = {
    "interp": ("interp: loading, errors, files", ["interp"]),
    "interp.core": ("interp.core: the model, capture, interventions, Result", ["interp.core", "interp.core.backends"]),
    "interp.data": ("interp.data: prompt sets and bundled models", ["interp.data"]),
    "interp.directions": ("interp.directions: estimators and scoring", ["interp.directions"]),
    "interp.judges": ("interp.judges: refusal and language judges", ["interp.judges"]),
    "interp.steering": ("interp.steering: steering and weight edits", ["interp.steering"]),
    "interp.circuits": ("interp.circuits: patching, heads, DAS", ["interp.circuits"]),
    "interp.attacks": ("interp.attacks: the attack engine", ["interp.attacks"]),
    "interp.cli": ("interp.cli: the command line", ["interp.cli"]),
    "probes": ("probes: linear probes", ["probes"]),
    "analyses": ("analyses: one module per analysis", ["analyses"]),
}


def modules(package: str) -> list[str]:
    """The package and its modules (not subpackages), from the source tree (nothing is imported)."""
    folder = ROOT.joinpath(*package.split("."))
    names = [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(folder)])
                         if not m.ispkg and not m.name.startswith("_")]
    return names


def reference_page(title: str, packages: list[str]) -> str:
    lines = [f"# {title}", "", "Rendered from the docstrings of the source tree.", ""]
    for package in packages:
        for name in modules(package):
            lines += [f"::: {name}", ""]
    return "\n".join(lines)


def notebook_page(path: Path) -> tuple[str, dict[str, bytes]]:
    """The notebook as Markdown (nbconvert) and the files its outputs need (images), by name."""
    import nbformat
    from nbconvert import MarkdownExporter

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # plotly figures stored as their JSON only: give Markdown an HTML form to keep
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if PLOTLY in data and "text/html" not in data:
                data["text/html"] = plotly_html(data[PLOTLY])
    body, resources = MarkdownExporter().from_notebook_node(nb, resources={"output_files_dir": f"{path.stem}_files"})
    has_outputs = any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")
    note = ("" if has_outputs else
            f"!!! note \"Run it to see the outputs\"\n    This notebook is stored without outputs. Run it with "
            f"`jupyter lab notebooks/{path.name}` (the `notebook` extra) to see its tables and interactive figures; "
            "`make test-slow` runs every notebook end to end, and a `make docs` after it shows every output here.\n\n")
    header = f"<!-- converted from notebooks/{path.name} by docs/hooks.py at build time -->\n\n"
    return header + note + body, resources.get("outputs", {})


def plotly_html(figure: dict) -> str:
    """A notebook's plotly figure as an HTML fragment; plotly.js comes once per site (`PLOTLY_JS`)."""
    import plotly.io as pio

    html = pio.to_html(pio.from_json(json.dumps(figure)), full_html=False, include_plotlyjs=False)
    # the theme loads extra scripts after the content: draw once the page (and plotly.js) has loaded
    return re.sub(r"(<script[^>]*>)(.*?)(</script>)", r'\1window.addEventListener("load", function () {\2});\3', html,
                  count=1, flags=re.S)



def on_files(files: Files, config) -> Files:
    import plotly.offline

    files.append(File.generated(config, PLOTLY_JS, content=plotly.offline.get_plotlyjs()))
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        # the copy `make test-slow` executed (tests/test_notebooks.py), with every output, when there is one
        executed = EXECUTED / path.name
        text, outputs = notebook_page(executed if executed.exists() else path)
        files.append(File.generated(config, f"tutorials/{path.stem}.md", content=text))
        for name, data in outputs.items():
            files.append(File.generated(config, f"tutorials/{name}", content=data))
    for name, (title, packages) in REFERENCE.items():
        files.append(File.generated(config, f"reference/{name}.md", content=reference_page(title, packages)))
    return files
