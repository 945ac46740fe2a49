"""Safety vs useful subspaces (Ponkshe et al.): activation-space overlaps across depth on a real model, the
update-space comparison of a useful and a harmful fine-tune, and the parameter-space miniature's table.

    python -m benchmarks.overlap --model qwen2.5-coder-0.5b-instruct --n 64 --out benchmarks/results/overlap_qwen05.json
    python -m benchmarks.overlap --model smollm2-135m-instruct --n 6 --tiny --out /tmp/overlap_tiny.json  # a check

Steps:
1. Activation space (`analyses.overlap.compare`): `--n` prompts of each bundled set (harmful_train, Alpaca
   instructions from harmless_train, code_tasks), captured once at every layer's `hook_resid_post`, last token;
   the energy subspaces at every share of the reference's sweep (0.01 ... 0.6) compared pairwise, uncentred (the
   reference's setting) and centred, each overlap beside max(k1, k2) / d and a sampled baseline; and, beside them,
   the former default share 0.9 (`former_default_0.9`), outside the reference's activation sweep.
2. Update space (`analyses.overlap.updates`): the instruct model of the miniature (`--mini` base) fine-tuned twice
   with the same options (the miniature's, with the reference's cosine schedule): on the miniature's useful
   answers (useful) and on as many AdvBench goal/target pairs (harmful); per parameter the two updates' energy
   bases at every share of the reference's sweep (0.01 ... 0.99), their overlap and max(k_U, k_H) / m.
3. The miniature (`analyses.miniature`): SmolLM2-135M-Instruct fine-tuned to refuse harmful requests (aligned),
   then toward useful answers written by Qwen2.5-Coder-0.5B (fine-tuned; the answers are cached under the interp
   cache); then `analyses.overlap.weights` at two k (`--fractions`, of min(m, n) per matrix; P from the exact SVD,
   as the reference runs it): the energy of the fine-tune's update inside the alignment subspace, and the refusal
   rate, the judge's rate on harmless prompts and the useful-text loss of base / aligned / fine-tuned / same /
   opposite / orthogonal. The checkpoints go to a temporary folder removed at the end (`--work DIR` keeps them).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path

import torch

import interp
from analyses import miniature as M
from analyses import overlap as O
from benchmarks.common import provenance, write_result
from interp.data.prompts import dataset
from interp.steering.finetune import FineTuneOptions
from interp.steering.weight_updates import Rank

PAIRS = [("harmful", "alpaca"), ("harmful", "code"), ("alpaca", "code")]


def activation_part(model_name: str, n: int, samples: int, seed: int) -> dict:
    model = interp.load(model_name, device="cpu", dtype=torch.float32)
    sets = {"harmful": dataset("harmful_train", n=n, seed=seed), "alpaca": dataset("harmless_train", n=n, seed=seed),
            "code": dataset("code_tasks", n=n, seed=seed)}
    options = O.OverlapConfig(samples=samples, seed=seed)
    t = time.perf_counter()
    acts = {name: O.last_token_activations(model, prompts, options) for name, prompts in sets.items()}
    capture_s = time.perf_counter() - t
    out: dict = {"model": model_name, "prompts_per_set": n, "capture_s": round(capture_s, 1),
                 "departures": O.ACTIVATION_DEPARTURES}
    for centre in (False, True):
        opts = O.OverlapConfig(samples=samples, seed=seed, centre=centre)
        s = O.compare(acts, PAIRS, opts, model.fingerprint).summary()
        out["centred" if centre else "uncentred"] = {k: s[k] for k in ("shares", "d", "window_layers", "sweep", "by_share")}
        old = O.compare(acts, PAIRS, O.OverlapConfig(shares=(0.9,), samples=samples, seed=seed, centre=centre),
                        model.fingerprint).summary()
        out.setdefault("former_default_0.9", {})["centred" if centre else "uncentred"] = old["by_share"]["0.9"]
    return out


def update_part(options: M.MiniatureConfig, work: Path) -> dict:
    """The instruct model fine-tuned on useful and on harmful pairs (same options), and the update comparison."""
    t = time.perf_counter()
    pool = dataset("harmless_train", n=options.n_useful + options.n_helpful, seed=options.seed)
    answers = M.useful_answers(pool, options.answer_model, options.answer_tokens, options.cache)
    useful = list(zip(pool, answers))[options.n_helpful:]
    harmful = O.harmful_pairs(len(useful), seed=options.seed)
    ft = replace(options.useful, scheduler="cosine", warmup_ratio=0.02)
    made = O.make_update_fine_tunes(options.base, useful, harmful, work / "updates", ft)
    fine_tune_s = time.perf_counter() - t
    result = O.updates(options.base, made.useful, made.harmful, seed=options.seed)
    s = result.summary()
    kinds: dict[str, dict] = {}
    for share in ("0.1", "0.5", "0.9"):
        kinds[share] = by_kind_overlap([r for r in s["tensors"] if f"{r['share']:g}" == share])
    return {"instruct": options.base, "pairs": len(useful), "harmful_data": "AdvBench goal/target pairs",
            "useful_data": f"harmless_train instructions with {options.answer_model}'s answers",
            "fine_tune_options": asdict(ft), "fine_tunes": made.summary(), "svd": s["svd"],
            "delta_dtype": s["delta_dtype"], "shares": s["shares"], "totals": s["totals"], "by_kind": kinds,
            "unchanged": s["unchanged"], "departures": s["departures"],
            "seconds": {"fine_tunes": round(fine_tune_s, 1), **result.seconds}}


def by_kind_overlap(rows: list[dict]) -> dict:
    """Mean overlap and baseline per kind of parameter (`self_attn.q_proj`, `mlp.down_proj`, ...) at one share."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        parts = r["name"].split(".")
        groups[".".join(parts[-3:-1]) if "layers" in parts else r["name"]].append(r)
    return {kind: {f: round(sum(r[f] for r in rs) / len(rs), 4) for f in ("overlap", "expected")} | {"tensors": len(rs)}
            for kind, rs in groups.items()}


def by_kind(rows: list[dict]) -> dict:
    """Mean energy (and its random baselines) per kind of matrix (`self_attn.q_proj`, `mlp.down_proj`, ...)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        parts = r["name"].split(".")
        groups[".".join(parts[-3:-1]) if parts[-1] == "weight" and "layers" in parts else r["name"]].append(r)
    return {kind: {f: round(sum(r[f] for r in rs) / len(rs), 4) for f in ("energy", "random_energy", "expected")}
            | {"matrices": len(rs), "k": sorted({r["k"] for r in rs})} for kind, rs in groups.items()}


def parameter_part(options: M.MiniatureConfig, fractions: list[float], work: Path) -> dict:
    t = time.perf_counter()
    evaluation = M.evaluation(options)
    answers_s = time.perf_counter() - t
    mini = M.build(work / "models", options)
    t = time.perf_counter()
    result = O.weights(options.base, mini.aligned, mini.finetuned, work / "projections",
                       ranks=[Rank(fraction=f) for f in fractions], evaluation=evaluation, seed=options.seed)
    weights_s = time.perf_counter() - t
    projections = {label: {k: v for k, v in p.items() if k != "matrices"} | {"by_kind": by_kind(p["matrices"])}
                   for label, p in result.projections.items()}
    return {"miniature": "a miniature of the paper's setting: SmolLM2-135M-Instruct as the base, two short CPU "
                         "fine-tunes as the aligned and fine-tuned models (analyses/miniature.py)",
            "options": {"base": options.base, "answer_model": options.answer_model, "answer_tokens": options.answer_tokens,
                        "n_refusal": options.n_refusal, "n_helpful": options.n_helpful, "n_useful": options.n_useful,
                        "n_eval": options.n_eval, "eval_tokens": options.eval_tokens,
                        "align": asdict(options.align), "useful": asdict(options.useful)},
            "fine_tunes": {"aligned": mini.align_run.summary(), "finetuned": mini.useful_run.summary()},
            "table": result.table(), "examples": [{k: r.get(k) for k in ("name", "example_harmful", "example_harmless")}
                                                  for r in result.models],
            "projections": projections, "seconds": {"answers": round(answers_s, 1), **result.seconds,
                                                    "weights_total": round(weights_s, 1)}}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="the model of the activation-space part")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--n", type=int, default=64, help="prompts per set in activation space")
    p.add_argument("--samples", type=int, default=200, help="random subspaces of the sampled baseline")
    p.add_argument("--fractions", type=float, nargs=2, default=[0.1, 0.5], help="the two k, as fractions of min(m, n)")
    p.add_argument("--tiny", action="store_true", help="a plumbing check: a few examples, two steps per fine-tune")
    p.add_argument("--work", type=Path, default=None, help="keep the miniature's checkpoints here (default: removed)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="overlap-bench-"))
    if args.tiny:  # SmolLM2 writes the "useful" answers, cached in the work folder, not the interp cache
        steps = FineTuneOptions(epochs=1, batch_size=2, max_steps=2)
        mini = M.MiniatureConfig(answer_model="smollm2-135m-instruct", answer_tokens=8, n_refusal=4, n_helpful=2,
                                  n_useful=4, n_eval=4, eval_tokens=8, align=steps, useful=steps, seed=args.seed,
                                  cache=work / "answers")
    else:
        mini = M.MiniatureConfig(seed=args.seed)
    try:
        t = time.perf_counter()
        acts = activation_part(args.model, args.n, args.samples, args.seed)
        acts["seconds"] = round(time.perf_counter() - t, 1)
        updates = update_part(mini, work)
        params = parameter_part(mini, list(args.fractions), work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    out = {"benchmark": "overlap", "activations": acts, "updates": updates, "parameters": params,
           "note": "Qwen2.5-Coder-0.5B-Instruct here is a GGUF requantisation of an AWQ checkpoint; SmolLM2 a Q4_1 GGUF "
                   "dequantised. The parameter-space part is a miniature, not a replication of the paper's setting.",
           "seconds_total": round(time.perf_counter() - start, 1)}
    write_result(args.out, out, provenance("benchmarks.overlap", argv, "cpu"))
    for centre in ("uncentred", "centred"):
        lo, hi = acts[centre]["window_layers"]
        for name, sw in acts[centre]["sweep"].items():
            print(f"{centre:>10} {name:<20} layers {lo}-{hi}, per share: " + "  ".join(
                f"{sh:g}: {o:.3f} ({e:.3f})" for sh, o, e in zip(sw["shares"], sw["window_overlap"], sw["window_expected"])))
    for share, t in updates["totals"].items():
        print(f"updates share {share:<5} overlap {t['all']['overlap']:.3f} (random {t['all']['expected']:.3f}); "
              f"matrices {t['matrices']['overlap']:.3f} (random {t['matrices']['expected']:.3f})")
    for label, proj in params["projections"].items():
        print(f"{label}: energy of U in top-k(V) {proj['energy']:.3f}, random {proj['random_energy']:.3f}, "
              f"expected {proj['expected_energy']:.3f}")
    print(f"{'checkpoint':<16}{'energy':>8}{'refusal':>9}{'harmless':>10}{'loss':>8}")
    for r in params["table"]:
        print(f"{r['name']:<16}{r['energy'] if r['energy'] is not None else float('nan'):>8.3f}{r['refusal_rate']:>9.2f}"
              f"{r['harmless_refusal_rate']:>10.2f}{r['useful_loss']:>8.3f}")
    print(f"total {out['seconds_total']:.0f} s")
    return out


if __name__ == "__main__":
    main()
