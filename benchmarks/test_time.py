"""How long `make test` takes from a fresh clone, phase by phase: set-up, lint, each test tier.

Clones the committed HEAD into a temporary folder (nothing uncommitted travels), with its own model cache
(`INTERP_CACHE`), and times, one after the other:
- setup: `make install models` (virtual environment, packages, both bundled models' first preparation);
- lint: `make lint` (ruff and mypy);
- unit, integration: `pytest -m unit`, `pytest -m integration` (the two tiers `make test` runs);
- acceptance (with --acceptance only): `pytest -m acceptance` (what `make test-slow` runs).
`make test` is setup + lint + unit + integration. Each phase records its seconds, its exit code and the last
line pytest printed (counts of passed and failed tests).

    python -m benchmarks.test_time --out benchmarks/results/test_time.json [--acceptance] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, provenance, write_result

PHASES = {
    "setup": ["make", "install", "models"],
    "lint": ["make", "lint"],
    "unit": [".venv/bin/python", "-m", "pytest", "-q", "-m", "unit"],
    "integration": [".venv/bin/python", "-m", "pytest", "-q", "-m", "integration"],
    "acceptance": [".venv/bin/python", "-m", "pytest", "-q", "-m", "acceptance"],
}


def run_phase(name: str, folder: Path, env: dict[str, str]) -> dict:
    """Run one phase in `folder`; its seconds, exit code and last output line."""
    start = time.perf_counter()
    done = subprocess.run(PHASES[name], cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    print(f"{name}: {seconds:.0f} s, exit {done.returncode}: {lines[-1] if lines else ''}", flush=True)
    return {"seconds": round(seconds, 1), "returncode": done.returncode, "last_line": lines[-1] if lines else "",
            "command": " ".join(PHASES[name])}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON result file")
    parser.add_argument("--acceptance", action="store_true", help="also time the acceptance tier")
    parser.add_argument("--keep", help="clone into this folder and keep it (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    prov = provenance("benchmarks.test_time", argv, "cpu")
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="interp-fresh-"))
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(folder)], check=True)
        env = {**os.environ, "INTERP_CACHE": str(folder / ".cache")}
        env.pop("VIRTUAL_ENV", None)
        names = ["setup", "lint", "unit", "integration"] + (["acceptance"] if args.acceptance else [])
        phases = {}
        for name in names:
            phases[name] = run_phase(name, folder, env)
            if name == "setup" and phases[name]["returncode"] != 0:
                break
        make_test = sum(phases[n]["seconds"] for n in ("setup", "lint", "unit", "integration") if n in phases)
        result = {"phases": phases, "make_test_seconds": round(make_test, 1),
                  "make_test_passed": all(phases.get(n, {}).get("returncode") == 0
                                          for n in ("setup", "lint", "unit", "integration")),
                  "cores": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                  "note": "one phase after the other in a fresh clone with a fresh model cache"}
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return write_result(args.out, result, prov)


if __name__ == "__main__":
    main()
