"""Heads as matrices on a real model: spectra, composition against random matrices, channels, and channel edits
on IOI and the Laundry List.

    python -m benchmarks.heads --model qwen2.5-coder-0.5b-instruct --out benchmarks/results/heads_qwen05.json
    python -m benchmarks.heads --model smollm2-135m-instruct --n 4 --lengths 2 3 --out /tmp/heads_tiny.json  # a check

Steps (all timed):
1. `analyses.heads.run`: every head's W_OV / W_QK spectrum (factored SVD), Q/K/V composition of every head pair
   against `--baseline-samples` random matrix pairs, and the channels of the strongest pairs.
2. Receivers from data: the heads with the largest direct effect on the IOI logit difference (direct logit
   attribution at the last token, `analyses.heads.direct_effects`, on `--n` clean IOI prompts): the movers.
   Senders from weights: for each of the `--movers` top movers, the earlier head with the largest Q-composition
   into it (the inhibition heads' route in GPT-2), and that pair's channel (the fewest sender components carrying
   half of the pair's squared composition).
3. Edits of those channels in activations (`interp.circuits.heads.ChannelEdit`): removed (scale 0) and amplified
   (`--amplify`), and a control of the same size (each sender's weakest components for that pair, removed).
   For each, on IOI and on the Laundry List at every `--lengths` list length (`--n` items each): solve rate
   (positive logit difference), accuracy (the answer beats every list item: the paper's measure) and the mean
   logit difference. Everything comes from one batched logits call per task and condition.

The JSON holds the provenance (`benchmarks.common`), the analysis summary, the chosen heads and channels, and the
table of accuracies. Keep `--n` small on a CPU: the whole default run is a few minutes on 2 cores.
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
    p.add_argument("--n", type=int, default=24, help="items per task (and per list length)")
    p.add_argument("--lengths", type=int, nargs="+", default=[2, 3, 4, 6, 8], help="Laundry List lengths")
    p.add_argument("--movers", type=int, default=3, help="top direct-effect heads used as receivers")
    p.add_argument("--amplify", type=float, default=2.0, help="scale of the amplified channel")
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
    toks = ioi.tokens(model)
    effects = heads_analysis.direct_effects(model, ioi.clean, toks.answer, toks.wrong)
    H = model.n_heads
    order = effects.flatten().argsort(descending=True)[:args.movers].tolist()
    movers = [(i // H, i % H) for i in order]
    q = result.compositions["Q"]
    pairs, edits_off, edits_up, edits_control = [], [], [], []
    for mover in movers:
        if mover[0] == 0:
            continue
        column = q.scores[:, :, mover[0], mover[1]]  # [L, H] over senders (NaN at and after the mover's layer)
        flat = torch.nan_to_num(column.flatten(), nan=-1.0).argmax().item()
        sender = (flat // H, flat % H)
        ch = result.channel("Q", sender, mover)
        shares = q.shares(sender, mover)
        weakest = shares.argsort()[:len(ch["components"])].tolist()
        ch["direct_effect_receiver"] = float(effects[mover])
        ch["direct_effect_sender"] = float(effects[sender])
        ch["control_components"] = weakest
        pairs.append(ch)
        v = write_directions(result.svds, *sender, ch["components"])
        edits_off.append(ChannelEdit(*sender, v, 0.0))
        edits_up.append(ChannelEdit(*sender, v, args.amplify))
        edits_control.append(ChannelEdit(*sender, write_directions(result.svds, *sender, weakest), 0.0))
    timings["selection"] = time.perf_counter() - t

    t = time.perf_counter()
    conditions = {"none": [], "channel_removed": edits_off, f"channel_x{args.amplify:g}": edits_up,
                  "control_removed": edits_control}
    tasks = {"ioi": ioi, **{f"laundry[length={n}]": make_task("laundry", args.n, seed=args.seed, length=n)
                            for n in args.lengths}}
    table = {name: {cond: task_metrics(model, task, edits) for cond, edits in conditions.items()}
             for name, task in tasks.items()}
    timings["edits"] = time.perf_counter() - t

    top = effects.flatten().topk(8)
    out = {
        "model": model.name, "n": args.n, "lengths": args.lengths, "timings_s": timings,
        "analysis": result.summary(),
        "direct_effects_top": [{"head": [i // H, i % H], "effect": float(v)} for v, i in zip(top.values, top.indices)],
        "direct_effects_bottom": [{"head": [i // H, i % H], "effect": float(effects.flatten()[i])}
                                  for i in effects.flatten().argsort()[:4].tolist()],
        "edited_channels": pairs, "table": table,
    }
    write_result(args.out, out, provenance("benchmarks.heads", argv, args.device))
    for name, row in table.items():
        print(name, "  ".join(f"{c}: acc {m['accuracy']:.2f} ld {m['logit_diff']:.2f}" for c, m in row.items()))
    return out


if __name__ == "__main__":
    main()
