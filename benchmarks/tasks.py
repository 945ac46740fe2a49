"""Which circuit tasks the bundled models solve: `interp.circuits.tasks.report` on each, written with provenance.

    python -m benchmarks.tasks --out benchmarks/results/tasks.json        # both bundled models, 24 items per task

Per model: the solve rate (share of clean prompts with a positive logit difference) of IOI, capitals and the
Laundry List at each list length, and for the Laundry List the accuracy among the list's items (the paper's
measure, stricter than the solve rate). The patching and heads analyses keep only the tasks and lengths a model
solves (`interp.circuits.tasks.solvable`).
"""

from __future__ import annotations

import argparse
import time

import torch

import interp
from benchmarks.common import provenance, write_result
from interp.circuits.tasks import report


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
    p.add_argument("--n", type=int, default=24, help="items per task and per list length")
    p.add_argument("--lengths", type=int, nargs="+", default=[2, 4, 6, 8, 10], help="Laundry List lengths")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out: dict = {"n": args.n, "seed": args.seed, "lengths": args.lengths, "models": {}}
    for name in args.models:
        start = time.perf_counter()
        model = interp.load(name, dtype=torch.float32, device="cpu")
        rates = report(model, n=args.n, seed=args.seed, lengths=args.lengths)
        out["models"][name] = {"rates": rates, "seconds": time.perf_counter() - start}
        print(name, {k: round(v, 2) for k, v in rates.items()}, flush=True)
    result = write_result(args.out, out, provenance("benchmarks.tasks", argv, "cpu"))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
