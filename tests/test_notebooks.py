"""The notebooks run top to bottom (executed with nbclient on the real bundled models), every code cell ran, and
the cells that show a figure or a Result show it (a plotly figure, a Result's HTML table and figures)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from interp.io import write_text

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = ROOT / "out" / "notebooks"  # the notebooks as this run executed them (docs/hooks.py reads them)
PLOTLY = "application/vnd.plotly.v1+json"


def execute(name: str, env: dict[str, str]) -> nbformat.NotebookNode:
    """The notebook after running it with `env` set (and restored afterwards)."""
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "a code cell did not run"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    EXECUTED.mkdir(parents=True, exist_ok=True)  # `make docs` renders these, outputs and all, as the tutorials
    write_text(EXECUTED / name, nbformat.writes(nb))
    return nb


def shown(nb: nbformat.NotebookNode, source_end: str) -> dict:
    """The rich output (mime type -> data) of the code cell whose source ends with `source_end`."""
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and c.source.rstrip().endswith(source_end)]
    return {k: v for o in cell.outputs if o.output_type in ("execute_result", "display_data") for k, v in o.data.items()}


def test_capture_notebook():
    nb = execute("capture.ipynb", {"INTERP_NOTEBOOK_MODEL": "smollm2-135m-instruct", "INTERP_NOTEBOOK_N": "8"})
    assert PLOTLY in shown(nb, "f'PCA at layer {layer}')")


def test_refusal_notebook():
    nb = execute("refusal.ipynb", {"INTERP_NOTEBOOK_MODEL": "qwen2.5-coder-0.5b-instruct", "INTERP_NOTEBOOK_N": "16",
                                   "INTERP_NOTEBOOK_NVAL": "4"})
    for figure in ("result.figure('ablation_score')", "result.figure('pca')", "result.figure('projection')"):
        assert PLOTLY in shown(nb, figure), figure
    page = shown(nb, "ev")["text/html"]  # the evaluation is a Result: it displays itself
    assert "refusal_rate.harmful_ablated" in page and "Plotly.newPlot" in page


def test_rerouting_notebook():
    nb = execute("rerouting.ipynb", {"INTERP_NOTEBOOK_MODEL": "smollm2-135m-instruct"})
    for figure in ('result.figure("rerouting")', 'result.figure("loss curves")'):
        assert PLOTLY in shown(nb, figure), figure


def test_circuits_notebook():
    nb = execute("circuits.ipynb", {"INTERP_NOTEBOOK_MODEL": "smollm2-135m-instruct", "INTERP_NOTEBOOK_N": "4"})
    for figure in ("result.figure('resid')", "result.figure('heads')", "heads.figure('ov_spectra')",
                   "heads.figure('composition_vs_baseline')", "heads.figure('channels')"):
        assert PLOTLY in shown(nb, figure), figure
