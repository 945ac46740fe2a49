"""The notebooks run top to bottom (executed with nbclient on the real bundled models)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def execute(name: str, env: dict[str, str]) -> None:
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def test_capture_notebook():
    execute("capture.ipynb", {"INTERP_NOTEBOOK_MODEL": "smollm2-135m-instruct", "INTERP_NOTEBOOK_N": "8"})


def test_refusal_notebook():
    execute("refusal.ipynb", {"INTERP_NOTEBOOK_MODEL": "qwen2.5-coder-0.5b-instruct", "INTERP_NOTEBOOK_N": "16",
                              "INTERP_NOTEBOOK_NVAL": "4"})


def test_rerouting_notebook():
    execute("rerouting.ipynb", {"INTERP_NOTEBOOK_MODEL": "smollm2-135m-instruct"})
