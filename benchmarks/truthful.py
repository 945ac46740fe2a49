"""ITI on TruthfulQA: MC1 / MC2 baseline vs ITI on held-out folds, the KL and CE cost, and batched per-head probes
against scikit-learn's one-head-at-a-time loop.

    python -m benchmarks.truthful --model qwen2.5-coder-0.5b-instruct --questions 400 --out benchmarks/results/truthful_qwen05.json
    python -m benchmarks.truthful --model smollm2-135m-instruct --questions 12 --n-tune 3 --out /tmp/truthful_tiny.json  # a check

Steps:
1. `analyses.truthful.run` with `--folds` folds by question on the first `--questions` TruthfulQA questions (file
   order): head activations, baseline multiple choice, per fold the probes, the grid of K x alpha on the training
   fold's validation questions, the held-out scores with the chosen point, the cost on bundled harmless prompts.
2. Probes: on fold 0's training questions, all (layer, head) logistic probes at once (`probes.LinearProbes`,
   Newton, scikit-learn's objective) against `sklearn.linear_model.LogisticRegression(C=1)` fitted head by head
   (every head, or `--sklearn-heads` of them drawn at random, the loop's time scaled to all heads); validation
   accuracy of both and the time ratio, on the same CPU in the same process.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

import interp
from analyses import truthful as T
from benchmarks.common import provenance, write_result
from interp.data.truthfulqa import folds, read_questions
from probes.linear import LinearProbes


def probe_check(result: T.TruthfulResult, seed: int, n_heads: int | None, val_ratio: float) -> dict:
    """Batched probes vs scikit-learn head by head on fold 0's training questions (its validation split scores)."""
    acts, labels, pq = result.activations, result.labels, result.pair_question
    test = set(folds(result.n_questions, result.options.folds, result.options.seed)[0])
    train, val = T._split([i for i in range(result.n_questions) if i not in test], val_ratio, result.options.seed)
    tr, va = torch.isin(pq, torch.tensor(train)), torch.isin(pq, torch.tensor(val))
    return compare_probes(acts[tr], labels[tr], acts[va], labels[va], seed, n_heads)


def compare_probes(Xtr: torch.Tensor, ytr: torch.Tensor, Xva: torch.Tensor, yva: torch.Tensor, seed: int,
                   n_heads: int | None) -> dict:
    """All [pair, layer, head, d] logistic probes at once (`LinearProbes`) against scikit-learn's LogisticRegression
    fitted head by head (every head, or `n_heads` drawn at random, its time scaled to all heads): validation
    accuracy of both and the time ratio, in the same process."""
    from sklearn.linear_model import LogisticRegression

    L, H = Xtr.shape[1], Xtr.shape[2]
    t = time.perf_counter()
    batched = LinearProbes("logistic", C=1.0, max_iter=100).fit(Xtr, ytr)
    acc_batched = batched.score(Xva, yva)
    t_batched = time.perf_counter() - t
    heads = [(l, h) for l in range(L) for h in range(H)]
    if n_heads is not None and n_heads < len(heads):
        heads = random.Random(seed).sample(heads, n_heads)
    acc_sk = {}
    t = time.perf_counter()
    for l, h in heads:
        clf = LogisticRegression(C=1.0, max_iter=1000).fit(Xtr[:, l, h].double().numpy(), ytr.numpy())
        acc_sk[(l, h)] = float((clf.predict(Xva[:, l, h].double().numpy()) == yva.numpy()).mean())
    t_loop = (time.perf_counter() - t) * (L * H) / len(heads)
    diffs = torch.tensor([abs(acc_sk[k] - float(acc_batched[k])) for k in heads])
    return {"n_train_pairs": len(ytr), "n_val_pairs": len(yva), "heads_compared": len(heads),
            "all_heads": L * H, "max_abs_accuracy_diff": round(float(diffs.max()), 4),
            "mean_abs_accuracy_diff": round(float(diffs.mean()), 5),
            "share_within_1_point": round(float((diffs <= 0.01 + 1e-9).float().mean()), 4),
            "mean_val_accuracy": {"batched": round(float(acc_batched.mean()), 4),
                                  "sklearn": round(sum(acc_sk.values()) / len(acc_sk), 4)},
            "batched_all_heads_s": round(t_batched, 3), "sklearn_loop_all_heads_s": round(t_loop, 3),
            "speedup": round(t_loop / t_batched, 2), "newton_iterations": batched.n_iter_,
            "sklearn": "LogisticRegression(C=1.0, max_iter=1000), lbfgs, float64 features, one head at a time"}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--questions", type=int, default=400, help="the first N TruthfulQA questions (file order)")
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--form", default="qa", choices=["qa", "chat"])
    p.add_argument("--grid-heads", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--grid-alphas", type=float, nargs="+", default=[5.0, 15.0])
    p.add_argument("--n-tune", type=int, default=16)
    p.add_argument("--n-cost", type=int, default=16)
    p.add_argument("--sklearn-heads", type=int, default=None, help="heads compared with scikit-learn (default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = interp.load(args.model, device="cpu", dtype=torch.float32)
    questions = read_questions(n=args.questions)
    options = T.TruthfulConfig(form=args.form, folds=args.folds, seed=args.seed, grid_heads=tuple(args.grid_heads),
                        grid_alphas=tuple(args.grid_alphas), n_tune=args.n_tune, n_cost=args.n_cost)
    t = time.perf_counter()
    result = T.run(model, questions, options)
    total = time.perf_counter() - t
    summary = result.summary()
    probes = probe_check(result, args.seed, args.sklearn_heads, options.val_ratio)
    out = {"benchmark": "truthful", "model": args.model, "n_questions": len(questions),
           "note": "Qwen2.5-Coder-0.5B-Instruct here is a GGUF requantisation of an AWQ checkpoint (see MODELS.md); "
                   "figures will not match papers run on bf16 models.",
           "mc1": summary["mc1"], "mc2": summary["mc2"], "mc3": summary["mc3"], "kl": summary["kl"], "ce": summary["ce"],
           "target": {"mc2_gain_at_least": 0.03, "kl_at_most": 0.5,
                      "met": bool(summary["mc2"]["gain"] >= 0.03 and summary["kl"] <= 0.5)},
           "probes": probes, "analysis": summary, "seconds_total": round(total, 1)}
    write_result(args.out, out, provenance("benchmarks.truthful", argv, "cpu"))
    print(f"MC1 {summary['mc1']}  MC2 {summary['mc2']}  KL {summary['kl']}  CE {summary['ce']}")
    print(f"probes: speedup {probes['speedup']}x, max |acc diff| {probes['max_abs_accuracy_diff']}, "
          f"within 1 point {probes['share_within_1_point']}; total {total:.0f} s")
    return out


if __name__ == "__main__":
    main()
