"""Refusal direction, end to end: does it work, does the weight edit agree, and what do the fast paths save?

    python -m benchmarks.refusal --model qwen2.5-coder-0.5b-instruct --out refusal.json --save-direction DIR

In one process (each comparison against a baseline measured in the same run):
1. Extract the direction (analyses.refusal.run, the defaults: Arditi's filters, the library's DEFAULT_SYSTEM
   (the chat template's own system prompt; `--system none` for Arditi's no system turn), validation from
   the bundled validation splits) from `--n-train` harmful + harmless training prompts (refusal_splits train);
   the filter counts and every relaxation; the per-layer table (each layer's plain difference in means at the
   last end-of-instruction position, ablated, scored exactly) beside the chosen direction; stage timings.
2. The same extraction exhaustively (`shortlist=None`, same refusal tokens): does the shortlist choose the same
   candidate, and how do the top-5 by exact score agree (`refusal.compare_searches`; `--skip-exhaustive`).
3. The same extraction with the one-candidate-per-forward loop: same choice? the scoring-time ratio
   (`--skip-loop`).
4. On held-out prompts used neither for training nor validation: harmful = HarmBench (text val) and AdvBench
   behaviours with every prompt that also appears (case and punctuation aside) in harmful_train or harmful_val
   removed; harmless = harmless_val beyond the validation draw. `refusal.evaluate` at `--max-new-tokens`
   (256 by default): refusal rate baseline / hook-ablated / orthogonalised checkpoint, the judge's false-positive
   rate on harmless baseline answers, first-token KL and CE on harmless reference completions for the hooks and
   the checkpoint, the harmless refusal rate under addition at the calibrated strength and at alpha = 1.
5. Hook ablation vs the checkpoint: the same refuse/comply decision, identical text.
6. Steered generation (ablation at every layer) vs plain `hf.generate`: the time ratio.

`--save-direction DIR` writes the extracted direction folder (the Result with its artifacts) for other benchmarks.
The JSON (written atomically) starts with the provenance of the run (see `benchmarks.common`).
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

import interp
from analyses import refusal
from benchmarks.common import generation_overhead, provenance, write_result
from interp.core.interventions import Ablate, Add
from interp.core.model import DEFAULT_SYSTEM, system_record
from interp.data.prompts import dataset
from interp.judges import RefusalScore, SubstringJudge


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def held_out_harmful(n: int, seed: int = 0) -> tuple[list[str], dict]:
    """`n` HarmBench + AdvBench prompts (seeded draw) none of which is in harmful_train or harmful_val."""
    seen = {_norm(p) for p in dataset("harmful_train") + dataset("harmful_val")}
    pool, dropped = [], 0
    for name in ("harmbench", "advbench"):
        for p in dataset(name):
            if _norm(p) in seen:
                dropped += 1
            else:
                seen.add(_norm(p))
                pool.append(p)
    if n > len(pool):
        raise SystemExit(f"only {len(pool)} held-out harmful prompts, fewer than --n-eval {n}")
    keep = sorted(random.Random(seed).sample(range(len(pool)), n))
    return [pool[i] for i in keep], {"pool": len(pool), "dropped_overlaps": dropped}


def held_out_harmless(n: int, validation: list[str], seed: int = 0) -> list[str]:
    rest = [p for p in dataset("harmless_val") if p not in set(validation)]
    return [rest[i] for i in sorted(random.Random(seed).sample(range(len(rest)), n))]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--save-direction", type=Path, default=None, help="write the extracted direction folder here")
    ap.add_argument("--n-train", type=int, default=128, help="harmful and harmless training prompts each")
    ap.add_argument("--n-val", type=int, default=32, help="validation prompts per class (bundled validation splits)")
    ap.add_argument("--n-eval", type=int, default=100, help="held-out evaluation prompts per class")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--system", default=system_record(DEFAULT_SYSTEM), help="none | default | TEXT (default: the library's)")
    ap.add_argument("--refusal-tokens", default=None,
                    help="comma-separated refusal tokens instead of estimating them (for models that never refuse)")
    ap.add_argument("--gen-prompts", type=int, default=8, help="prompts of the steered-generation timing")
    ap.add_argument("--gen-runs", type=int, default=3)
    ap.add_argument("--skip-loop", action="store_true", help="skip the one-candidate-per-forward comparison")
    ap.add_argument("--skip-exhaustive", action="store_true", help="skip the exhaustive (shortlist=None) comparison")
    args = ap.parse_args(argv)

    model = interp.load(args.model)
    harmful, harmless = dataset("harmful_train", n=args.n_train), dataset("harmless_train", n=args.n_train)
    prov = provenance("benchmarks.refusal", argv, model.device)
    out: dict = {"model": model.fingerprint, "dtype": str(model.dtype),
                 "settings": vars(args) | {"out": str(args.out), "save_direction": str(args.save_direction)}}
    given = None
    if args.refusal_tokens:
        ids = [i for t in args.refusal_tokens.split(",") for i in model.tokenizer(t, add_special_tokens=False).input_ids[:1]]
        given = RefusalScore(refusal_ids=ids)

    cfg = refusal.RefusalConfig(n_val=args.n_val, system=args.system)
    res = refusal.run(model, refusal.RefusalData(harmful, harmless, refusal=given), cfg)
    for line in res.messages():
        print(line, flush=True)
    best_layer = min(res.per_layer, key=lambda r: r["ablation_score"])
    out["extraction"] = {"chosen": res.chosen, "baseline": res.baseline, "timings_s": res.timings,
                         "refusal_tokens": res.refusal.refusal_tokens_, "filter_counts": res.filter_counts,
                         "relaxations": res.relaxations, "system": res.system, "per_layer": res.per_layer,
                         "best_single_layer": best_layer,
                         "chosen_cuts_at_least_best_layer": res.chosen["ablation_score"] <= best_layer["ablation_score"] + 1e-6}
    print("chosen", res.chosen, res.timings, flush=True)
    print("best single layer (last position)", best_layer, flush=True)
    if args.save_direction is not None:
        res.save(args.save_direction)
        print(f"saved the direction to {args.save_direction}", flush=True)

    if not args.skip_exhaustive:
        full = refusal.run(model, refusal.RefusalData(harmful, harmless, refusal=res.refusal), refusal.RefusalConfig(n_val=args.n_val, system=args.system,
                                                                               shortlist=None))
        out["shortlist_vs_exhaustive"] = refusal.compare_searches(res, full) | {
            "shortlist": cfg.shortlist, "shortlist_scoring_s": res.timings["scoring"],
            "exhaustive_scoring_s": full.timings["scoring"]}
        print("shortlist vs exhaustive", out["shortlist_vs_exhaustive"], flush=True)

    if not args.skip_loop:
        loop = refusal.run(model, refusal.RefusalData(harmful, harmless, refusal=res.refusal),
                           refusal.RefusalConfig(n_val=args.n_val, system=args.system, one_candidate_per_forward=True))
        same = (loop.chosen["layer"], loop.chosen["position"]) == (res.chosen["layer"], res.chosen["position"])
        out["batched_vs_loop"] = {"same_direction": same, "batched_scoring_s": res.timings["scoring"],
                                  "loop_scoring_s": loop.timings["scoring"],
                                  "speedup": loop.timings["scoring"] / res.timings["scoring"],
                                  "cosine": float(loop.direction.vector @ res.direction.vector)}
        print("batched vs loop", out["batched_vs_loop"], flush=True)

    harmful_eval, pool = held_out_harmful(args.n_eval)
    harmless_eval = held_out_harmless(args.n_eval, dataset("harmless_val", n=args.n_val, seed=cfg.seed))
    out["eval_sets"] = {"harmful": "harmbench + advbench, overlaps with harmful_train/harmful_val removed", **pool,
                        "harmless": "harmless_val beyond the validation draw", "n_harmful": len(harmful_eval),
                        "n_harmless": len(harmless_eval)}
    ev = refusal.evaluate(model, res.direction, harmful_eval, harmless_eval, max_new_tokens=args.max_new_tokens,
                          system=res.system)
    print("\n".join(ev.lines()), flush=True)
    rates = ev["refusal_rate"]
    base, abl = rates["harmful_baseline"], rates["harmful_ablated"]
    judge = SubstringJudge()
    once = model.generate(harmless_eval, max_new_tokens=args.max_new_tokens, system=res.system,
                          interventions=[Add(res.direction, res.chosen["layer"], 1.0)])
    g = ev["generations"]
    hook_dec, ortho_dec = judge.refused(g["harmful_ablated"]), judge.refused(g["harmful_orthogonalized"])
    out["evaluation"] = {
        **{k: ev[k] for k in ("refusal_rate", "judge_fp_rate", "capability", "kl_harmless_ablation", "addition_alpha",
                              "max_new_tokens", "system")},
        "ablation_cut_of_baseline": (base - abl) / base if base else None,
        "orthogonalized_cut_of_baseline": (base - rates["harmful_orthogonalized"]) / base if base else None,
        "harmless_refused_with_addition": rates["harmless_added"],
        "harmless_refused_with_addition_alpha1": sum(judge.refused(once)) / len(once),
        "hook_vs_checkpoint": {"decision_agreement": sum(a == b for a, b in zip(hook_dec, ortho_dec)) / len(hook_dec),
                               "identical_text": sum(a == b for a, b in zip(g["harmful_ablated"], g["harmful_orthogonalized"])) / len(hook_dec)},
        "examples": {k: v[:4] for k, v in g.items()} | {"harmless_added_alpha1": once[:4]},
    }
    print("evaluation", {k: v for k, v in out["evaluation"].items() if k != "examples"}, flush=True)

    out["generation_overhead"] = generation_overhead(model, Ablate(res.direction), harmful_eval[:args.gen_prompts],
                                                     min(args.max_new_tokens, 64), args.gen_runs)
    print("generation", {k: v for k, v in out["generation_overhead"].items() if k != "times_s"}, flush=True)
    written = write_result(args.out, out, prov)
    print(f"wrote {args.out}")
    return written


if __name__ == "__main__":
    main()
