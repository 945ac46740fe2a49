"""How long `interp directions extract` takes at its defaults, and whether its shortlist chooses what scoring every
candidate chooses.

Runs, in a subprocess each, at the default thread settings as a user would (OMP_NUM_THREADS and MKL_NUM_THREADS
removed from the environment):

    interp directions extract --harmful data/refusal_splits/harmful_train.json \
        --harmless data/refusal_splits/harmless_train.json --out OUT --overwrite

(every other option at its default: the bundled Qwen2.5-Coder-0.5B-Instruct, 128 + 128 prompts, the template's own
system prompt, the attribution shortlist), then, with --exhaustive, the same command with `--shortlist 0` (every
candidate scored exactly). Records each run's wall time, the analysis's own step times, the load averages, the
chosen candidate, how many candidates were scored, and `analyses.refusal.compare_searches` of the two runs.
Issue 20's target: the default run within 10 minutes on the 2-core machine, with the same choice as the exhaustive run.

    python -m benchmarks.extract_time --out benchmarks/results/extract_time.json --exhaustive [--wait-load 2.5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from analyses.refusal import compare_searches
from benchmarks.common import ROOT, provenance, write_result
from benchmarks.demo_time import THREAD_VARS, interp_command, load_avg, wait_for_load

TARGET_S = 600.0
SETS = ["--harmful", "data/refusal_splits/harmful_train.json", "--harmless", "data/refusal_splits/harmless_train.json"]


def extract(folder: Path, extra: list[str]) -> tuple[dict, dict]:
    """One `interp directions extract` run into `folder`: its record (wall time, load, what its result.json says)
    and that result.json."""
    cmd = interp_command() + ["directions", "extract", *SETS, "--out", str(folder), "--overwrite", *extra]
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    before = load_avg()
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip() and "%|" not in line]
    if done.returncode != 0:
        raise SystemExit(f"extract failed ({done.returncode}):\n" + "\n".join(lines[-20:]))
    summary = json.loads((folder / "result.json").read_text())
    return {"command": " ".join(["interp"] + cmd[len(interp_command()):]), "total_seconds": round(seconds, 1),
            "load_avg_before": before, "load_avg_after": load_avg(), "timings_s": summary["timings_s"],
            "chosen": summary["chosen"], "relaxations": summary["relaxations"], "filter_counts": summary["filter_counts"],
            "n_candidates": len(summary["candidates"]),
            "n_scored": sum("ablation_score" in c for c in summary["candidates"]),
            "n_filter_scored": sum("passes" in c for c in summary["candidates"]),
            "output_tail": lines[-8:]}, summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON result file")
    parser.add_argument("--exhaustive", action="store_true", help="also run with --shortlist 0 and compare the choices")
    parser.add_argument("--wait-load", type=float, default=None, help="start once the 1-minute load is below this")
    parser.add_argument("--wait-max", type=float, default=600.0, help="seconds to wait for --wait-load at most")
    args = parser.parse_args(argv)
    prov = provenance("benchmarks.extract_time", argv, "cpu")
    waited = wait_for_load(args.wait_load, args.wait_max) if args.wait_load is not None else None
    tmp = Path(tempfile.mkdtemp(prefix="interp-extract-"))
    runs, summaries = {}, {}
    for name, extra in [("default", [])] + ([("exhaustive", ["--shortlist", "0"])] if args.exhaustive else []):
        runs[name], summaries[name] = extract(tmp / name, extra)
        print(f"{name}: {runs[name]['total_seconds']} s, chosen layer {runs[name]['chosen']['layer']}", flush=True)
    view = {k: SimpleNamespace(candidates=s["candidates"], chosen=s["chosen"]) for k, s in summaries.items()}
    out: dict = {"benchmark": "extract_time", "waited_for_load": waited, "runs": runs}
    if args.exhaustive:
        out["shortlist_vs_exhaustive"] = compare_searches(view["default"], view["exhaustive"])  # type: ignore[arg-type]
    same = out.get("shortlist_vs_exhaustive", {}).get("same_choice")
    out["target"] = {"default_run_at_most_s": TARGET_S, "same_choice_as_exhaustive": same,
                     "met": bool(runs["default"]["total_seconds"] <= TARGET_S and same)}
    write_result(args.out, out, prov)
    print(json.dumps(out["target"]), flush=True)
    return out


if __name__ == "__main__":
    main()
