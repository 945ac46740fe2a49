"""Activation patching on IOI: batched sweep vs one location per forward, attribution patching, heads, paths.

    python -m benchmarks.patching --out benchmarks/results/patching_qwen05.json   # Qwen2.5-Coder-0.5B, 4 IOI items, template 0
    python -m benchmarks.patching --model smollm2-135m-instruct --n 2 --layers 0,29 --out /tmp/p.json   # a smoke run

One process, one IOI task set (`interp.circuits.tasks.make_task("ioi", n)`, the items the model solves). Measured:
- the full residual-stream sweep (every layer x every position of the shortest prompt, `hook_resid_pre`),
  batched (`interp.circuits.patching.sweep`, `--rows` rows per forward) vs one location per forward (the items batched,
  whole prompts: the loop a TransformerLens tutorial writes), each timed `--runs` times in rotating order; the
  largest difference between the two grids;
- exact grids of attention and MLP outputs (layer x position) and heads (layer x head, every position), and
  attribution patching's estimate of all four grids from one backward, with its Pearson correlation per grid;
- the heads at the last position (layer x head), whose largest cells are taken as the "movers" (the heads that
  write the answer where it is read out), and path patching (Wang et al. 2022) of the strongest earlier heads
  of the all-position head grid ("senders") to the movers through their queries, keys and values.
Results go to a JSON file, written atomically, with provenance (see `benchmarks.common`).
"""

from __future__ import annotations

import argparse
import statistics

import torch

import interp
from benchmarks.common import provenance, rounds, write_result
from interp.circuits import patching as P
from interp.circuits.tasks import make_task, solvable
from interp.core.sites import Site


def _grid(values: torch.Tensor, rows: int) -> list[list[float]]:
    return [[round(float(v), 5) for v in row] for row in values.view(rows, -1)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--n", type=int, default=4, help="IOI items generated (the solved ones are kept)")
    p.add_argument("--grids", default="attn,mlp,heads", help="exact grids besides resid (attribution covers the same)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--template", type=int, default=0,
                   help="IOI template index (one template, so the position axis lines up across items; -1: mixed)")
    p.add_argument("--rows", type=int, default=64, help="rows per forward of the batched sweep")
    p.add_argument("--runs", type=int, default=1, help="timed rounds of the two residual sweeps (median reported)")
    p.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    p.add_argument("--senders", type=int, default=4)
    p.add_argument("--movers", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = interp.load(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    task = solvable(model, make_task("ioi", args.n, args.seed, template=None if args.template < 0 else args.template))
    tokens = task.tokens(model)
    layers = list(range(model.n_layers)) if args.layers is None else [int(x) for x in args.layers.split(",")]
    n_pos = min(len(r) for r in tokens.clean)
    sites = [Site(i, kind) for i in layers for kind in P.GRIDS.values()]
    runs = P.prepare(model, tokens, sites)
    out: dict = {"model": model.name, "task": "ioi", "n_items": len(task), "solve_rate": task.meta["solve_rate"],
                 "clean_logit_diff": float(runs.clean_ld.mean()), "corrupted_logit_diff": float(runs.corrupted_ld.mean()),
                 "layers": layers, "positions": list(range(-n_pos, 0)),
                 "position_tokens": [model.tokenizer.decode([t]) for t in tokens.clean[0][-n_pos:]]}

    # 1. the residual sweep, batched vs one location per forward
    resid = P.grid_locations(model, "resid", n_pos, layers)
    got: dict[str, torch.Tensor] = {}
    methods = {"batched": lambda: got.__setitem__("batched", P.sweep(model, runs, resid, rows_per_forward=args.rows)),
               "loop": lambda: got.__setitem__("loop", P.sweep(model, runs, resid, one_location_per_forward=True))}
    times = rounds(methods, args.runs, warmup=0, device=args.device)
    med = {k: statistics.median(v) for k, v in times.items()}
    out["resid_sweep"] = {"locations": len(resid), "rows_per_forward": args.rows, "batched_s": med["batched"],
                          "loop_s": med["loop"], "speedup": med["loop"] / med["batched"], "times_s": times,
                          "max_abs_diff": float((got["batched"] - got["loop"]).abs().max())}
    print(f"resid sweep ({len(resid)} locations): batched {med['batched']:.1f} s, loop {med['loop']:.1f} s, "
          f"x{med['loop'] / med['batched']:.2f}; max diff {out['resid_sweep']['max_abs_diff']:.2e}")

    # 2. the other grids, and attribution patching of all four from one backward
    exact = {"resid": got["batched"]}
    locs = {"resid": resid}
    for name in [g for g in args.grids.split(",") if g and g != "resid"]:
        locs[name] = P.grid_locations(model, name, n_pos, layers)
        exact[name] = P.sweep(model, runs, locs[name], rows_per_forward=args.rows)
    est = P.attribution(model, runs, [loc for name in locs for loc in locs[name]]).split([len(v) for v in locs.values()])
    out["grids"] = {name: _grid(exact[name], len(layers)) for name in exact}
    out["attribution_grids"] = {name: _grid(e, len(layers)) for name, e in zip(locs, est)}
    out["attribution_correlation"] = {name: P.pearson(exact[name], e) for name, e in zip(locs, est)}
    print("attribution vs exact, Pearson r:", {k: round(v, 3) for k, v in out["attribution_correlation"].items()})

    # 3. movers (heads at the last position) and path patching of the strongest earlier heads into them
    last = P.sweep(model, runs, P.grid_locations(model, "heads", n_pos, layers, position=-1), rows_per_forward=args.rows)
    out["grids"]["heads_last_position"] = _grid(last, len(layers))
    heads = [(layer, h) for layer in layers for h in range(model.n_heads)]
    movers = [heads[i] for i in last.abs().argsort(descending=True)[:args.movers].tolist()]
    lowest = min(layer for layer, _ in movers)
    overall = exact.get("heads", last)  # the all-position head grid, else the last position's
    ranked = [heads[i] for i in overall.abs().argsort(descending=True).tolist()]
    senders = [h for h in ranked if h[0] < lowest and h not in movers][:args.senders]
    out["movers"] = [{"layer": l, "head": h, "effect_last_position": float(last[heads.index((l, h))])} for l, h in movers]
    out["senders"] = [{"layer": l, "head": h, "effect": float(overall[heads.index((l, h))])}
                      for l, h in senders]
    if senders:
        full = P.prepare(model, tokens, [Site(i, "attn.hook_z") for i in range(max(l for l, _ in movers))])
        out["path_patching"] = {via: P.path_patching(model, tokens, [[]] + senders + [senders], movers, via=via,
                                                     rows_per_forward=args.rows, runs=full).tolist()
                                for via in ("q", "k", "v")}
        out["path_patching_rows"] = ["none"] + [f"L{l}H{h}" for l, h in senders] + ["all senders"]
        print("movers", movers, "senders", senders, "path patching", out["path_patching"])
    result = write_result(args.out, out, provenance("benchmarks.patching", argv, args.device))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
