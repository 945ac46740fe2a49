"""Heads as matrices on a real model: spectra, composition against random matrices, channels, the inhibition
score of each channel on held-out items, and channel edits on IOI and the Laundry List.

    python -m benchmarks.heads --model qwen2.5-coder-0.5b-instruct --out benchmarks/results/heads_qwen05.json
    python -m benchmarks.heads --model smollm2-135m-instruct --n 8 --lengths 2 3 --out /tmp/heads_tiny.json  # a check

Steps (all timed):
1. `analyses.heads.run`: every head's W_OV / W_QK spectrum (factored SVD), Q/K/V composition of every head pair
   against `--baseline-samples` random matrix pairs, and the channels of the strongest pairs.
2. `analyses.heads.channels` on `--n` IOI items, split in two disjoint parts (`--select-share` of the distinct
   prompts: the select part; the rest: the score part). Receivers from the select part only: the `--movers` heads
   with the largest direct effect on the logit difference (direct logit attribution at the last token). Senders
   from weights: for each mover, the earlier head with the largest Q-composition into it (the inhibition heads'
   route in GPT-2), and that pair's channel (the fewest sender components carrying half of the pair's squared
   composition). On the score part only: the inhibition score (the drop of the mover's attention gap between IO
   and S when the channel is removed) of the channel, of a control (the sender's weakest components, as many) and
   of every sender component alone, beside its composition score (the paper's Figure 2).
3. Edits of those channels in activations (`interp.circuits.heads.ChannelEdit`): removed (scale 0) and amplified
   (`--amplify`), and the control removed. For each, on the IOI score part and on the Laundry List at every
   `--lengths` list length (`--laundry-n` fresh items each, never used for selection): solve rate (positive logit
   difference), accuracy (the answer beats every list item: the paper's measure) and the mean logit difference.
   Everything comes from one batched logits call per task and condition.

The JSON holds the provenance (`benchmarks.common`), the analysis summary, the split (`split`: which items chose
the receivers and which scored them, and `figures_use`), the chosen heads, channels and inhibition scores, and the
table of accuracies. Keep `--n` small on a CPU.
"""

from __future__ import annotations

import argparse
import time

import torch

import interp
from analyses import heads as heads_analysis
from benchmarks.common import provenance, write_result
from interp.circuits.heads import ChannelEdit, write_directions
from interp.circuits.tasks import TaskSet, logit_diff, make_task


@torch.no_grad()
def task_metrics(model: interp.Model, task: TaskSet, edits: list[ChannelEdit]) -> dict:
    """Solve rate, accuracy among the choices (answer vs wrong where there are none) and mean logit difference of
    the clean prompts under `edits`, from one batched logits call."""
    toks = task.tokens(model)
    with model.intervene(*edits):
        logits = model.logits(task.clean, chat=task.chat)
    diff = logit_diff(logits, toks.answer, toks.wrong)
    choices = task.meta.get("choices")
    if choices is None:
        correct = diff > 0
    else:
        ids = [[model.tokenizer(c, add_special_tokens=False).input_ids[0] for c in row] for row in choices]
        correct = torch.tensor([row[int(logits[i, row].argmax())] == toks.answer[i].item() for i, row in enumerate(ids)])
    return {"solve_rate": float((diff > 0).float().mean()), "accuracy": float(correct.float().mean()),
            "logit_diff": float(diff.mean())}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--n", type=int, default=48, help="IOI items, split into the select and the score part")
    p.add_argument("--laundry-n", type=int, default=24, help="Laundry List items per length (fresh, never used for "
                                                             "selection)")
    p.add_argument("--select-share", type=float, default=0.5, help="share of the IOI prompts that choose the movers")
    p.add_argument("--lengths", type=int, nargs="+", default=[2, 3, 4, 6, 8], help="Laundry List lengths")
    p.add_argument("--movers", type=int, default=3, help="top direct-effect heads used as receivers")
    p.add_argument("--amplify", type=float, default=2.0, help="scale of the amplified channel")
    p.add_argument("--no-components", action="store_true", help="skip the inhibition score of every single component")
    p.add_argument("--baseline-samples", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    timings: dict[str, float] = {}
    model = interp.load(args.model, device=args.device, dtype=torch.float32)

    t = time.perf_counter()
    result = heads_analysis.run(model, None, heads_analysis.HeadsConfig(baseline_samples=args.baseline_samples, seed=args.seed))
    timings["analysis"] = time.perf_counter() - t

    t = time.perf_counter()
    ioi = make_task("ioi", args.n, seed=args.seed)
    study = heads_analysis.channels(model, ioi, result, heads_analysis.ChannelsConfig(
        receivers=args.movers, select_share=args.select_share, per_component=not args.no_components, seed=args.seed))
    timings["channels"] = time.perf_counter() - t
    edits_off, edits_up, edits_control = [], [], []
    for ch in study.pairs:
        sender = tuple(ch["sender"])
        v = write_directions(result.svds, *sender, ch["components"])
        edits_off.append(ChannelEdit(*sender, v, 0.0))
        edits_up.append(ChannelEdit(*sender, v, args.amplify))
        edits_control.append(ChannelEdit(*sender, write_directions(result.svds, *sender, ch["control_components"]), 0.0))

    t = time.perf_counter()
    conditions = {"none": [], "channel_removed": edits_off, f"channel_x{args.amplify:g}": edits_up,
                  "control_removed": edits_control}
    held = ioi.subset(study.split["score"])
    tasks = {"ioi[score part]": held, **{f"laundry[length={n}]": make_task("laundry", args.laundry_n, seed=args.seed,
                                                                           length=n) for n in args.lengths}}
    table = {name: {cond: task_metrics(model, task, edits) for cond, edits in conditions.items()}
             for name, task in tasks.items()}
    timings["edits"] = time.perf_counter() - t

    effects = study.effects
    H = model.n_heads
    top = effects.flatten().topk(8)
    summary = study.summary()
    out = {
        "model": model.name, "n": args.n, "laundry_n": args.laundry_n, "lengths": args.lengths, "timings_s": timings,
        "analysis": result.summary(),
        "split": {"select_items": len(study.split["select"]), "score_items": len(study.split["score"]),
                  "select_share": args.select_share, "figures_use": {**summary["figures_use"], "table[ioi]": "score",
                                                                    "table[laundry]": "fresh items"}},
        "direct_effects_top": [{"head": [i // H, i % H], "effect": float(v)} for v, i in zip(top.values, top.indices)],
        "direct_effects_bottom": [{"head": [i // H, i % H], "effect": float(effects.flatten()[i])}
                                  for i in effects.flatten().argsort()[:4].tolist()],
        "edited_channels": study.pairs, "table": table,
    }
    write_result(args.out, out, provenance("benchmarks.heads", argv, args.device))
    for ch in study.pairs:
        inh = ch["inhibition"]
        print(f"{ch['sender'][0]}.{ch['sender'][1]} -> {ch['receiver'][0]}.{ch['receiver'][1]} components "
              f"{ch['components']}: inhibition {inh['channel']['score']:.4f} (control {inh['control']['score']:.4f})")
    for name, row in table.items():
        print(name, "  ".join(f"{c}: acc {m['accuracy']:.2f} ld {m['logit_diff']:.2f}" for c, m in row.items()))
    return out


if __name__ == "__main__":
    main()
