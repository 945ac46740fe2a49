"""How long `make demo`'s job takes after set-up: `interp demo` in a subprocess, timed as a whole and step by step.

Runs `interp demo --out OUT --overwrite` (what `make demo` runs once the virtual environment and the models are
prepared) at the default thread settings, as a user would: OMP_NUM_THREADS and MKL_NUM_THREADS are removed from
the subprocess's environment. Records the wall time of the whole command, the demo's own step times and the
refusal method's sub-steps (from the summary.json it writes, `timings`), the machine's load averages before,
at each step's end and after (the machine may be shared: a busy one stretches every step), and what the demo
showed (the chosen direction and the effect on the examples it printed), so a faster demo that stopped
showing the effect is seen as such.

With --wait-load X, waits (polling every 15 s, up to --wait-max seconds) until the 1-minute load average is
below X before starting, and records whether it got there.

    python -m benchmarks.demo_time --out benchmarks/results/demo_time.json [--wait-load 2.5] [--keep-output]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, provenance, write_result

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def wait_for_load(limit: float, max_wait: float) -> dict:
    """Poll until the 1-minute load average is below `limit` or `max_wait` seconds have passed."""
    start = time.perf_counter()
    while os.getloadavg()[0] >= limit and time.perf_counter() - start < max_wait:
        print(f"load {load_avg()}: waiting for the 1-minute load to drop below {limit}", flush=True)
        time.sleep(15)
    return {"limit": limit, "waited_s": round(time.perf_counter() - start, 1), "reached": os.getloadavg()[0] < limit}


def interp_command() -> list[str]:
    """The `interp` entry point of this interpreter's environment (the venv's), else `python -m interp.cli`."""
    script = Path(sys.executable).parent / "interp"
    return [str(script)] if script.exists() else [sys.executable, "-m", "interp.cli"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON result file")
    parser.add_argument("--model", default=None, help="--model for the demo (default: the demo's)")
    parser.add_argument("--wait-load", type=float, default=None, help="start once the 1-minute load is below this")
    parser.add_argument("--wait-max", type=float, default=600.0, help="seconds to wait for --wait-load at most")
    parser.add_argument("--keep-output", help="write the demo's folder here and keep it (default: a temporary one)")
    args = parser.parse_args(argv)
    prov = provenance("benchmarks.demo_time", argv, "cpu")
    waited = wait_for_load(args.wait_load, args.wait_max) if args.wait_load is not None else None
    folder = Path(args.keep_output) if args.keep_output else Path(tempfile.mkdtemp(prefix="interp-demo-")) / "demo"
    cmd = interp_command() + ["demo", "--out", str(folder), "--overwrite"] + (["--model", args.model] if args.model else [])
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    load_before = load_avg()
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    load_after = load_avg()
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip() and "%|" not in line]  # no bars
    summary = json.loads((folder / "summary.json").read_text()) if done.returncode == 0 else {}
    timings = summary.get("timings", {})
    refusal = summary.get("refusal", {})
    chosen = refusal.get("chosen", {})
    result = {
        "demo_command": " ".join(["interp"] + cmd[len(interp_command()):]),
        "returncode": done.returncode,
        "total_seconds": round(seconds, 1),
        "steps_s": {k: v["seconds"] for k, v in timings.get("steps", {}).items()},
        "steps_load_avg": {k: v["load_avg"] for k, v in timings.get("steps", {}).items()},
        "refusal_method_steps_s": {k: round(v, 1) for k, v in refusal.get("method_timings_s", {}).items()},
        "demo_own_total_s": timings.get("total_seconds"),
        "load_avg_before": load_before, "load_avg_after": load_after, "waited_for_load": waited,
        "thread_env_removed": [k for k in THREAD_VARS if k in os.environ], "cores": os.cpu_count(),
        "sizes": summary.get("sizes"), "departures": [d["name"] for d in summary.get("departures", [])],
        "chosen": {k: chosen.get(k) for k in ("layer", "position", "ablation_score", "kl", "addition_alpha", "relaxed")},
        "baseline": refusal.get("baseline"), "shown": summary.get("shown"),
        "step_line": next((line for line in lines if line.startswith("step times:")), None),
        "last_lines": lines[-3:],
        "note": "wall time of `interp demo` after set-up (venv and models prepared); steps_s are the demo's own "
                "step times, refusal_method_steps_s the refusal method's sub-steps inside its `refusal` step",
    }
    print(f"demo: {seconds:.0f} s, exit {done.returncode}; steps {result['steps_s']}; load before {load_before}, "
          f"after {load_after}", flush=True)
    return write_result(args.out, result, prov)


if __name__ == "__main__":
    main()
