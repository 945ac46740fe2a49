"""Batched per-head probes (ITI's probing step) against scikit-learn fitted head by head, on real activations.

    python -m benchmarks.probes --model qwen2.5-coder-0.5b-instruct --questions 200 --out benchmarks/results/probes_qwen05.json

`attn.hook_z` at the last token of every (TruthfulQA question, answer) pair of the first `--questions` questions
(`analyses.truthful.head_activations`, the QA form), split by question into training and validation
(`analyses.truthful._split`, the analysis's own split); then `benchmarks.truthful.compare_probes`: every (layer,
head) probe at once with `probes.LinearProbes` against `LogisticRegression(C=1)` one head at a time, validation
accuracy of both and the time ratio, on one thread each, in the same process. Issue 20's target: 10x at equal
held-out accuracy. The truthful benchmark reports the same comparison inside its 75-minute run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import interp
from analyses import truthful as T
from benchmarks.common import provenance, write_result
from benchmarks.truthful import compare_probes
from interp.data.truthfulqa import read_questions


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--questions", type=int, default=200, help="the first N TruthfulQA questions (file order)")
    p.add_argument("--val-ratio", type=float, default=0.25)
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions of the comparison (median reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--acts", default="out/bench/probes_acts.safetensors",
                   help="cache of the head activations (safetensors; reused for the same model and questions)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = interp.load(args.model, device="cpu", dtype=torch.float32)
    questions = read_questions(n=args.questions)
    cache = Path(args.acts) if args.acts else None
    key = {"model": args.model, "questions": str(len(questions))}
    t = time.perf_counter()
    if cache is not None and cache.exists() and safe_open(str(cache), "pt").metadata() == key:
        acts = load_file(str(cache))["acts"]  # the same model and questions, captured by an earlier run
    else:
        acts = T.head_activations(model, questions, progress=True)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            save_file({"acts": acts.contiguous()}, str(tmp), metadata=key)
            tmp.replace(cache)
    capture_s = time.perf_counter() - t
    labels = torch.tensor([lab for q in questions for lab in q.labels])
    pair_question = torch.tensor([i for i, q in enumerate(questions) for _ in q.labels])
    train, val = T._split(list(range(len(questions))), args.val_ratio, args.seed)
    tr, va = torch.isin(pair_question, torch.tensor(train)), torch.isin(pair_question, torch.tensor(val))
    runs = [compare_probes(acts[tr], labels[tr], acts[va], labels[va], args.seed, None) for _ in range(args.repeats)]
    speedups = sorted(r["speedup"] for r in runs)
    median = speedups[len(speedups) // 2]
    out = {"benchmark": "probes", "model": args.model, "n_questions": len(questions), "capture_s": round(capture_s, 1),
           "speedup_median": median, "speedups": speedups, "runs": runs,
           "target": {"speedup_at_least": 10.0, "met": bool(median >= 10.0 and runs[0]["max_abs_accuracy_diff"] <= 0.02)}}
    write_result(args.out, out, provenance("benchmarks.probes", argv, "cpu"))
    r = runs[0]
    print(f"batched {r['batched_all_heads_s']} s vs sklearn loop {r['sklearn_loop_all_heads_s']} s: {speedups} x; "
          f"mean val accuracy {r['mean_val_accuracy']}, max |diff| {r['max_abs_accuracy_diff']}")
    return out


if __name__ == "__main__":
    main()
