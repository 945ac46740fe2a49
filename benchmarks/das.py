"""DAS and the illusion checks on IOI: the residual stream and an MLP's hidden layer of a middle layer.

    python -m benchmarks.das --model qwen2.5-coder-0.5b-instruct --out benchmarks/results/das_qwen05.json
    python -m benchmarks.das --model smollm2-135m-instruct --n 16 --epochs 3 --out /tmp/das.json   # a smoke run

One process. The DAS items are Makelov et al.'s (`make_task("ioi", n, corrupt="position", test=0.25)`): pairs of
the position variable (base ABB or BAB, source the same names in either pattern), training on both directions of
the change and on the pairs whose label is kept, testing on the label-changing pairs of a disjoint vocabulary
(names, objects, places, templates the training items never use); the items the model solves. --corrupt swap and
--split random give the old one-way, in-distribution run. Positions: the last token, where the answer is read out.

The sites and the residual readers are chosen from data, not by hand (unless --resid-layer / --mlp-layer /
--readers are given), and never from the test items: a separate set of one-way name-swap pairs
(`make_task("ioi", n, corrupt="swap", vocab="train")`, the training vocabulary only; the position pairs have no
clean/corrupted gap to normalise a sweep by) goes through
1. a patching sweep at the last position (`interp.circuits.patching.sweep`): the residual stream (`hook_resid_pre`) and the
   MLP output (`hook_mlp_out`) of every layer, clean into corrupted;
2. the residual site is `hook_resid_post` of layer L-1 (the same activation as `hook_resid_pre` of L) for the first
   layer L whose last-position residual restores at least ARRIVED of the clean logit difference: the layer where
   the S-inhibition signal has arrived at the last position;
3. the MLP site is `mlp.hook_post` of the first layer from L on whose whole MLP output at the last position restores
   less than FLAT in absolute value: an MLP in the middle of the path that patching as a whole leaves unmoved, the
   paper's "MLP in the middle" case (Makelov et al. 2024, section 4), where an illusion is possible;
4. a heads sweep at the last position over the layers from L on: its top heads (`SubspacesConfig.n_readers`) are
   the readers the residual direction is decomposed against (the reference's name movers' W_Q).
ARRIVED, FLAT and the verdict's thresholds are constants fixed before the run (recorded in the JSON).
Per site: DAS (k, epochs, lr, seed), then on the test split the recovery of DAS, the whole component, the
difference-in-means and logistic-probe directions and a random subspace, each with its illusion diagnostics and
verdict (`analyses.subspaces.run`); DAS's training time on this machine and its forwards per epoch.
Results go to a JSON file, written atomically, with provenance (see `benchmarks.common`).
"""

from __future__ import annotations

import argparse
import time

import torch

import interp
from analyses import subspaces
from benchmarks.common import provenance, write_result
from interp.circuits import illusion
from interp.circuits import patching as P
from interp.circuits.tasks import make_task, solvable
from interp.core.sites import Site

ARRIVED = 0.4  # the residual stream at the last position restores this much: the signal has arrived there
FLAT = 0.05  # an MLP output whose patching restores less than this (in absolute value) does not matter as a whole


def choose_layers(model, tokens, rows: int) -> dict:
    """The last-position sweep and the two layers chosen from it (module docstring); `tokens`: the site-choice
    items (training vocabulary only)."""
    sites = [Site(i, kind) for i in range(model.n_layers) for kind in ("hook_resid_pre", "hook_mlp_out")]
    runs = P.prepare(model, tokens, sites)
    resid = P.sweep(model, runs, P.grid_locations(model, "resid", 1), rows_per_forward=rows)
    mlp = P.sweep(model, runs, P.grid_locations(model, "mlp", 1), rows_per_forward=rows)
    arrived = next((i for i, v in enumerate(resid.tolist()) if i > 0 and v >= ARRIVED), model.n_layers - 1)
    flat = next((i for i in range(arrived, model.n_layers) if abs(float(mlp[i])) < FLAT), arrived)
    return {"resid_pre_last_position": [round(float(v), 4) for v in resid],
            "mlp_out_last_position": [round(float(v), 4) for v in mlp], "resid_layer": arrived - 1, "mlp_layer": flat}


def choose_readers(model, tokens, first: int, rows: int) -> dict:
    """A heads sweep at the last position over layers first.. of the site-choice items (module docstring)."""
    layers = list(range(first, model.n_layers))
    sites = [Site(i, "attn.hook_z") for i in layers]
    runs = P.prepare(model, tokens, sites)
    values = P.sweep(model, runs, P.grid_locations(model, "heads", 1, layers, -1), rows_per_forward=rows)
    grid = values.view(len(layers), model.n_heads)
    return {"grids": {"heads": {"values": grid.tolist(), "row_labels": layers,
                                "column_labels": list(range(model.n_heads)), "columns": "head"}},
            "task": "ioi (swap, training vocabulary)", "n_items": len(tokens)}


def site_result(result: subspaces.SubspaceResult) -> dict:
    s = result.summary()
    return {"site": result.site, "positions": result.positions, "k": result.k, "n_items": s["n_items"],
            "split": s["split"], "pair_kinds": s["pair_kinds"],
            "clean_logit_diff": s["clean_logit_diff"], "corrupted_logit_diff": s["corrupted_logit_diff"],
            "recovery": s["recovery"], "interchange_accuracy": s["interchange_accuracy"], "verdicts": s["verdicts"],
            "diagnostics": s["diagnostics"], "readers": s["readers"], "thresholds": s["thresholds"],
            "chosen_from_data": s["chosen_from_data"], "departures": s["departures"],
            "das_train_s": result.fit.train_s, "das_forwards_per_epoch": result.fit.forwards_per_epoch,
            "das_steps": result.fit.steps, "das_epochs_run": len(result.fit.curves["train_loss"]),
            "das_best_epoch": result.fit.best_epoch, "das_curves": result.fit.curves, "timings_s": result.timings}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--n", type=int, default=64, help="IOI items generated (the solved ones are kept)")
    p.add_argument("--n-sweep", type=int, default=32, help="name-swap items of the training vocabulary for the "
                   "site and reader choice")
    p.add_argument("--corrupt", default="position", choices=["position", "swap", "abc"], help="the DAS pairs")
    p.add_argument("--kinds", default="both", choices=["both", "changing"], help="position pairs in training")
    p.add_argument("--preserve", default="same", choices=["same", "names"], help="kept-label position pairs")
    p.add_argument("--split", default="disjoint", choices=list(subspaces.SPLITS),
                   help="disjoint: test items from their own vocabulary; random: the old in-distribution split")
    p.add_argument("--test", type=float, default=0.25, help="share of the DAS items from the test vocabulary")
    p.add_argument("--readers", nargs="*", default=None, help="heads LAYER.HEAD reading the residual site "
                   "(default: the top heads of a sweep of the site-choice items)")
    p.add_argument("--n-readers", type=int, default=3, help="top heads of the sweep taken as readers")
    p.add_argument("--seed", type=int, default=0, help="seed of the items, the split, DAS and the random subspace")
    p.add_argument("--k", type=int, default=1, help="dimension of the DAS subspace")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--resid-layer", type=int, default=None, help="layer of hook_resid_post (default: from the sweep)")
    p.add_argument("--mlp-layer", type=int, default=None, help="layer of mlp.hook_post (default: from the sweep)")
    p.add_argument("--rows", type=int, default=64, help="rows per forward of the sweep")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = interp.load(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    options: dict = {"corrupt": args.corrupt}
    if args.corrupt == "position":
        options.update(kinds=args.kinds, preserve=args.preserve)
    if args.split == "disjoint":
        options["test"] = args.test
    task = solvable(model, make_task("ioi", args.n, args.seed, **options))
    defaults = illusion.Thresholds()
    out: dict = {"model": model.name, "task": "ioi", **options, "split": args.split, "n_items": len(task),
                 "solve_rate": task.meta["solve_rate"], "k": args.k, "epochs": args.epochs, "lr": args.lr,
                 "patience": args.patience, "seed": args.seed, "positions": [-1],
                 "thresholds": {"arrived": ARRIVED, "flat": FLAT, **defaults.to_json()},
                 "thresholds_fixed": "before the run: module constants and config defaults, none chosen from data"}
    choices: dict = {}
    need_sweep = args.resid_layer is None or args.mlp_layer is None or args.readers is None
    if need_sweep:  # the site-choice items: one-way swap pairs of the training vocabulary, never the test items
        chooser = solvable(model, make_task("ioi", args.n_sweep, args.seed + 1, corrupt="swap", vocab="train"))
        choice_tokens = chooser.tokens(model)
        out["site_choice_items"] = {"task": "ioi", "corrupt": "swap", "vocab": "train", "n_items": len(chooser),
                                    "seed": args.seed + 1}
    if args.resid_layer is None or args.mlp_layer is None:
        t = time.perf_counter()
        chosen = choose_layers(model, choice_tokens, args.rows)
        out["sweep"] = {**chosen, "sweep_s": time.perf_counter() - t}
        print(f"last-position sweep: resid_pre {chosen['resid_pre_last_position']}")
        print(f"                     mlp_out   {chosen['mlp_out_last_position']}")
        choices["sites"] = (f"from a last-position patching sweep of {len(chooser)} name-swap items of the training "
                            f"vocabulary (ARRIVED={ARRIVED}, FLAT={FLAT}, fixed before the run); no test item seen")
    resid_layer = args.resid_layer if args.resid_layer is not None else out["sweep"]["resid_layer"]
    mlp_layer = args.mlp_layer if args.mlp_layer is not None else out["sweep"]["mlp_layer"]
    heads_sweep = None
    if args.readers is None:
        t = time.perf_counter()
        heads_sweep = choose_readers(model, choice_tokens, resid_layer + 1, args.rows)
        out["heads_sweep"] = {**heads_sweep["grids"]["heads"], "sweep_s": time.perf_counter() - t}
    out["sites"] = {}
    for site in (f"blocks.{resid_layer}.hook_resid_post", f"blocks.{mlp_layer}.mlp.hook_post"):
        resid = "hook_resid" in site
        config = subspaces.SubspacesConfig(site, k=args.k, positions=(-1,), seed=args.seed, split=args.split,
                                           readers=tuple(args.readers or ()) if resid else (),
                                           n_readers=args.n_readers, epochs=args.epochs, lr=args.lr,
                                           patience=args.patience, progress=False)
        data = subspaces.SubspacesData(task, sweep=heads_sweep if resid else None, choices=choices)
        result = subspaces.run(model, data, config)
        out["sites"][site] = row = site_result(result)
        rec = ", ".join(f"{name} {v:.3f}" for name, v in row["recovery"].items())
        print(f"{site}: test recovery {rec}")
        print(f"  verdicts {row['verdicts']}; DAS {row['das_train_s']:.1f} s for {row['das_epochs_run']} epochs "
              f"({row['das_steps']} steps, {row['das_forwards_per_epoch']} forwards per epoch)")
        for name, reason in ((n, r) for n, d in row["diagnostics"].items() for r in d["reasons"]):
            print(f"  {name}: {reason}")
    out["total_s"] = time.perf_counter() - start
    result = write_result(args.out, out, provenance("benchmarks.das", argv, args.device))
    print(f"wrote {args.out} ({out['total_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
