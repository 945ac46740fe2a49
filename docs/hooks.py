"""MkDocs hooks (mkdocs.yml `hooks:`): pages made at build time from the repository, never committed.

- tutorials/<name>.md: each notebook of notebooks/ converted to Markdown by nbconvert, with the outputs it stores
  (text, tables, images; plotly's HTML outputs are kept as HTML);
- reference/<package>.md: the API reference, one page per package, one `::: module` block per module, rendered
  from the docstrings by mkdocstrings.
"""

from __future__ import annotations

import pkgutil
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
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
    body, resources = MarkdownExporter().from_notebook_node(nb, resources={"output_files_dir": f"{path.stem}_files"})
    has_outputs = any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")
    note = ("" if has_outputs else
            f"!!! note \"Run it to see the outputs\"\n    This notebook is stored without outputs. Run it with "
            f"`jupyter lab notebooks/{path.name}` (the `notebook` extra) to see its tables and interactive figures; "
            "`make test-slow` runs every notebook end to end.\n\n")
    header = f"<!-- converted from notebooks/{path.name} by docs/hooks.py at build time -->\n\n"
    return header + note + body, resources.get("outputs", {})


def on_files(files: Files, config) -> Files:
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        text, outputs = notebook_page(path)
        files.append(File.generated(config, f"tutorials/{path.stem}.md", content=text))
        for name, data in outputs.items():
            files.append(File.generated(config, f"tutorials/{name}", content=data))
    for name, (title, packages) in REFERENCE.items():
        files.append(File.generated(config, f"reference/{name}.md", content=reference_page(title, packages)))
    return files
