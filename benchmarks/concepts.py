"""G-ACT concept steering on a code model: which programming language it writes, steered toward C++, Java and Rust.

    python -m benchmarks.concepts --model qwen2.5-coder-0.5b-instruct --out benchmarks/results/concepts_qwen05.json \
        --report out/bench/concepts  # the Result too: every test answer, report.html
    python -m benchmarks.concepts --model smollm2-135m-instruct --tiny --out /tmp/concepts_tiny.json  # a check

`analyses.concepts.run` on the 210 bundled programming tasks, split by task id (seed 0) into 135 training, 30
validation and 45 test tasks. The model answers the neutral tasks in Python, so Python is no target; C++, Java and
Rust are three languages it writes well when asked, with distinct syntax and fence tags the detector reads
unambiguously. Per target: the baseline (neutral prompts, unsteered), naming the language in the prompt, one
mean-difference vector (ACT-style) and G-ACT (k-means centroids + a refined probe picking one per prompt), at the
layer and alpha chosen on validation tasks; greedy, `--max-new-tokens` tokens; the share of test answers in the
target language and the share still code. Beside them, the paper's static neuron-attribution baseline ("neurons"):
the `--neuron-k` MLP neurons with the highest attribution to the language's fence tag (gradient x activation, on
the training tasks), scaled by a factor chosen on the validation tasks, the same neurons for every test task
(`--no-neurons` leaves it out). Plus the per-layer probe accuracy and the time per generated token with the router
vs plain `generate`.

Resumable: the run records its finished units as it goes in `--checkpoint` (default: the `--report` folder when
given, else OUT.progress/ beside the JSON); a rerun of the same command after a kill continues from there and
writes the same figures as an uninterrupted run. The progress files are removed once the JSON is written.

Target (issue 12): G-ACT moves >= 60% of test answers to the target language while >= 90% still parse as code, and
beats the single mean vector. `target` in the JSON says, per language, whether each part was met.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import interp
from analyses import concepts as C
from benchmarks.common import provenance, write_result

TINY = dict(n_test=3, n_val=3, n_train=8, k=2, n_select=2, select_tokens=8, max_new_tokens=12, n_refine=4,
            refine_tokens=6, refine_epochs=1, n_timing=2, timing_tokens=4, timing_runs=1)


def targets_met(table: dict, fits: dict) -> dict:
    out = {}
    for lang, row in table.items():
        g, m = row.get("gact"), row.get("mean")
        if g is None:
            continue
        out[lang] = {"gact_target_share_at_least_0.6": g["target_share"] >= 0.6,
                     "gact_code_share_at_least_0.9": g["code_share"] >= 0.9,
                     "gact_beats_mean": m is not None and g["target_share"] > m["target_share"]}
        out[lang]["met"] = all(out[lang].values())
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--targets", nargs="+", default=["cpp", "java", "rust"])
    p.add_argument("--n-test", type=int, default=45)
    p.add_argument("--n-val", type=int, default=30)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--layers", type=int, nargs="+", default=None, help="candidate layers (default: 1/3 and 1/2 of depth)")
    p.add_argument("--alphas", type=float, nargs="+", default=[2.0, 4.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--neuron-k", type=int, default=1, help="neurons the static baseline scales (the paper: one)")
    p.add_argument("--neuron-scales", type=float, nargs="+", default=[2.0, 4.0, 8.0],
                   help="candidate factors on those neurons, chosen on validation tasks")
    p.add_argument("--no-neurons", action="store_true", help="leave the static neuron-attribution baseline out")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tiny", action="store_true", help="a few tasks and tokens: checks the script, not the method")
    p.add_argument("--report", default=None, help="also save the Result here (result.json, report.html, answers.jsonl)")
    p.add_argument("--checkpoint", default=None, help="folder for the run's progress, resumed by a rerun (default: "
                   "--report when given, else OUT.progress/)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    options = C.ConceptsConfig(targets=tuple(args.targets), n_test=args.n_test, n_val=args.n_val, k=args.k,
                        max_new_tokens=args.max_new_tokens, candidate_alphas=tuple(args.alphas), seed=args.seed,
                        candidate_layers=tuple(args.layers) if args.layers else None, neurons=not args.no_neurons,
                        neuron_k=args.neuron_k, neuron_scales=tuple(args.neuron_scales))
    if args.tiny:
        options = C.ConceptsConfig(**{**options.__dict__, **TINY})
    options.check(210)
    model = interp.load(args.model, device="cpu", dtype=torch.float32)
    t = time.perf_counter()
    from interp.core.progress import remove

    checkpoint = Path(args.checkpoint or args.report or f"{args.out}.progress")
    result = C.run(model, config=options, checkpoint=checkpoint)
    total = time.perf_counter() - t
    s = result.summary()
    table = {lang: {m: {"target_share": v["target_share"], "code_share": v["code_share"]} for m, v in row.items()}
             for lang, row in s["table"].items()}
    probes = {lang: {"unrefined_per_layer": v["unrefined"], "chance_per_layer": v["chance"],
                     "mean_unrefined": round(sum(v["unrefined"]) / len(v["unrefined"]), 4),
                     "at_injection": v["at_injection"]} for lang, v in s["probe_accuracy"].items()}
    out = {"benchmark": "concepts", "model": args.model, "tiny": args.tiny,
           "note": "Qwen2.5-Coder-0.5B-Instruct here is a GGUF requantisation of an AWQ checkpoint; figures will not "
                   "match runs on bf16 models. Shares are over the test tasks (greedy, max_new_tokens tokens); an "
                   "answer cut off before any code counts as not code.",
           "split": {k: v for k, v in s["split"].items() if k != "test_ids"}, "table": table,
           "chosen": {lang: {"layers": v["layers"], "alpha": v["alpha"]} for lang, v in s["chosen"].items()},
           "target": targets_met(s["table"], result.fits), "probe_accuracy": probes,
           "neurons": {lang: {"neurons": v["neurons"], "scores": v["scores"], "scale": v["scale"],
                              "validation": v["validation"], "fit_tasks": v["fit_tasks"]}
                       for lang, v in s["neurons"].items()},
           "gact_minus_neurons": {lang: {k: round(row["gact"][k] - row["neurons"][k], 4)
                                         for k in ("target_share", "code_share")}
                                  for lang, row in table.items() if "gact" in row and "neurons" in row},
           "time_per_token": s["time_per_token"], "refinement": s["refinement"], "analysis": s,
           "seconds_total": round(total, 1)}
    write_result(args.out, out, provenance("benchmarks.concepts", argv, "cpu"))
    if args.report:
        result.save(args.report)
    remove(checkpoint)
    if checkpoint.is_dir() and not any(checkpoint.iterdir()):
        checkpoint.rmdir()
    for lang, row in table.items():
        cells = "  ".join(f"{m} {v['target_share']:.2f}/{v['code_share']:.2f}" for m, v in row.items())
        print(f"{lang} (layer {s['chosen'][lang]['layers']}, alpha {s['chosen'][lang]['alpha']:g}): {cells}  "
              f"[target share / code share]")
    for lang, v in out["neurons"].items():
        print(f"{lang} neurons (layer, index) {v['neurons']} x{v['scale']:g}")
    print(f"targets: {out['target']}")
    print(f"time per token: {s['time_per_token']}; total {total:.0f} s")
    return out


if __name__ == "__main__":
    main()
