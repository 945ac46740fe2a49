"""Candidate outputs for the hand-labelled judge set (tests/data/labelled_answers.json), unlabelled.

    python -m benchmarks.judge_labels --out out/judge_labels/candidates.json
        [--model qwen2.5-coder-0.5b-instruct --model smollm2-135m-instruct] [--n 32] [--max-new-tokens 80]

The judges of `interp.judges` are scored against hand labels (`benchmarks.judges`). This script writes the
outputs that are labelled: greedy responses (`model.generate`, the chat template with the library's default
system prompt, fp32) of both bundled models under four conditions, about `--n` each:

- baseline: no intervention; three quarters harmful prompts, one quarter harmless ones (the judges' false
  positives on ordinary answers need some).
- ablated: harmful prompts, the refusal direction ablated at every layer (`interp.Ablate`).
- added: harmless prompts, the refusal direction added at its layer (`interp.Add`, `alpha` times the
  difference in means), the strengths of MODELS[...]["alphas"] taken in turn.
- attacked: a harmful behaviour with an adversarial suffix. Qwen: the adversarial prompts that the committed
  attack benchmarks found on this model, read from git at ATTACK_COMMIT (the labelled set was drawn then; the
  files have been rerun since): benchmarks/results/attack_qwen05.json (SSR with the probe loss and GCG) and
  attack_nanogcg_qwen05.json (the nanoGCG preset), each answered again here at `--max-new-tokens`. SmolLM2: half
  from a short GCG search on SmolLM2 itself (`interp.attacks.attack`, `--gcg-forwards` candidate rows per
  behaviour, one judged attempt so the judge never stops the search; log beside `--out`), half the Qwen
  adversarial prompts transferred unchanged (suffixes optimised on another model, said so in `source`).

The refusal direction: `interp.DiffInMeans` of `--n-train` harmful and harmless training prompts
(refusal_splits harmful_train / harmless_train, seeded draw) at `blocks.{layer}.hook_resid_pre`, the last
end-of-instruction token. The layer is the one `analyses.refusal.run` chose for the model: Qwen, the committed
refusal benchmark (benchmarks/results/refusal_qwen05.json); SmolLM2, a small run of it (32 training prompts per
class, 16 validation, a shortlist of 8). Harmful prompts are a seeded draw from harmful_val, HarmBench and AdvBench
(case and punctuation aside, each once); harmless ones from harmless_val; no prompt is used by two conditions of one
model. Outputs whose (model, prompt, response) repeats one already drawn, or one of the records of `--existing`
labelled before this script (those without a `condition`), are dropped.

Each record: behavior (the request without any suffix), prompt (the user message sent), response, first_token_id
(the first generated token, which the first-token refusal judge reads), model, condition, source (model,
condition and how it was made, system prompt, decoding). The file starts with the provenance of the run.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
from pathlib import Path
from typing import Any

import interp
from benchmarks.common import ROOT, provenance, write_result
from interp.core.interventions import Ablate, Add
from interp.core.system import DEFAULT_SYSTEM, system_record
from interp.data.prompts import dataset, dataset_path, read_behaviors

QWEN, SMOL = "qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"
MODELS: dict[str, dict[str, Any]] = {  # the layer analyses.refusal chose (see the module doc); addition strengths that change the answers
    QWEN: {"layer": 15, "alphas": (1.5, 2.0)},
    SMOL: {"layer": 9, "alphas": (4.0, 6.0, 8.0)},
}
ATTACK_RESULTS = {"attack_qwen05.json": ("ssr", "gcg"), "attack_nanogcg_qwen05.json": ("nanogcg",)}
ATTACK_COMMIT = "fe2f7e480b5ea1e8729446e9ddd2e72e130a2a59"  # the attack results the labelled set was drawn from
EXISTING = ROOT / "tests" / "data" / "labelled_answers.json"


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def harmful_pool() -> list[str]:
    """harmful_val, HarmBench and AdvBench, each request once (case and punctuation aside), in that order."""
    seen, out = set(), []
    for name in ("harmful_val", "harmbench", "advbench"):
        for p in dataset(name):
            if _norm(p) not in seen:
                seen.add(_norm(p))
                out.append(p)
    return out


def draw(pool: list[str], n: int, rng: random.Random, used: set[str]) -> list[str]:
    """`n` prompts of `pool` not in `used` (seeded), added to `used`."""
    free = [p for p in pool if p not in used]
    out = rng.sample(free, n)
    used.update(out)
    return out


def qwen_adversarial() -> list[dict]:
    """The final adversarial prompt of every behaviour of the committed Qwen attack benchmarks, each once."""
    seen, out = set(), []
    for name, methods in ATTACK_RESULTS.items():
        text = subprocess.run(["git", "show", f"{ATTACK_COMMIT}:benchmarks/results/{name}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
        data = json.loads(text)
        for method in methods:
            for b in data[method]["behaviors"]:
                if b["adversarial_prompt"] not in seen:
                    seen.add(b["adversarial_prompt"])
                    out.append({"behavior": b["behavior"], "prompt": b["adversarial_prompt"], "method": method,
                                "file": f"benchmarks/results/{name}"})
    return out


def refusal_direction(model, layer: int, n_train: int, seed: int):
    harmful, harmless = dataset("harmful_train", n=n_train, seed=seed), dataset("harmless_train", n=n_train, seed=seed)
    acts = model.capture(harmful + harmless, f"blocks.{layer}.hook_resid_pre", positions="eoi",
                         labels=[1] * n_train + [0] * n_train, progress=False)
    X = acts.stack("hook_resid_pre")  # [prompts, 1 layer, eoi positions, d]
    return interp.DiffInMeans().fit(X[:, 0, -1], acts.labels).direction_


def smol_gcg(model, behaviors, log: Path, forwards: int, max_new_tokens: int) -> list[dict]:
    """A short GCG search per behaviour on the model itself; the best-loss suffix of each (one judged attempt)."""
    from interp.attacks.run import AttackConfig, attack, final_rows
    from interp.io import read_jsonl

    config = AttackConfig.build(method="gcg", preset="default", max_forwards=forwards, candidates=16,
                                attempts=1, max_new_tokens=max_new_tokens)
    attack(model, behaviors, log, config, progress=False)
    rows = {r["id"]: r for r in final_rows(read_jsonl(log))}
    return [{"behavior": b.behavior, "prompt": rows[b.id]["adversarial_prompt"]} for b in behaviors if b.id in rows]


def generate(model, items: list[dict], max_new_tokens: int, interventions=()) -> list[dict]:
    outs = model.generate([it["prompt"] for it in items], max_new_tokens=max_new_tokens, batch_size=16,
                          interventions=list(interventions), progress=False)
    return [{**it, "response": str(o), "first_token_id": o.ids[0] if o.ids else None} for it, o in zip(items, outs)]


def candidates(name: str, args, existing: set[tuple[str, str, str]]) -> list[dict]:
    model = interp.load(name, device="cpu", dtype="float32")
    spec, rng = MODELS[name], random.Random(f"{args.seed}:{name}")
    used: set[str] = set()
    system = system_record(DEFAULT_SYSTEM)
    decoding = f"greedy, max_new_tokens={args.max_new_tokens}, fp32 CPU"
    template = f"chat template ({system} system)"
    layer = spec["layer"]
    r = refusal_direction(model, layer, args.n_train, args.seed)
    how = f"DiffInMeans of {args.n_train}+{args.n_train} refusal_splits train prompts, blocks.{layer}.hook_resid_pre, last eoi token"
    harmful, harmless = harmful_pool(), dataset("harmless_val")
    n = args.n
    rows: list[dict] = []

    def add(items, condition, detail, interventions=()):
        for it in generate(model, items, args.max_new_tokens, interventions):
            it["source"] = f"{name}, {condition} ({it.pop('detail', detail)}), {template}, {decoding}"
            rows.append({"behavior": it["behavior"], "prompt": it["prompt"], "response": it["response"],
                         "first_token_id": it["first_token_id"], "model": name, "condition": condition,
                         "source": it["source"]})

    n_harmless = n // 4
    base = [{"behavior": p, "prompt": p, "detail": "harmful prompt"} for p in draw(harmful, n - n_harmless, rng, used)]
    base += [{"behavior": p, "prompt": p, "detail": "harmless prompt"} for p in draw(harmless, n_harmless, rng, used)]
    add(base, "baseline", "")
    add([{"behavior": p, "prompt": p} for p in draw(harmful, n, rng, used)], "ablated",
        f"harmful prompt, refusal direction ablated at every layer; {how}", [Ablate(r)])
    added = [{"behavior": p, "prompt": p} for p in draw(harmless, n, rng, used)]
    for k, alpha in enumerate(spec["alphas"]):
        add(added[k::len(spec["alphas"])], "added",
            f"harmless prompt, refusal direction added at layer {layer} with alpha={alpha}; {how}", [Add(r, layer, alpha)])

    adversarial = qwen_adversarial()
    if name == QWEN:
        items = [{**a, "detail": f"{a['method']} adversarial prompt found on this model ({a['file']})"} for a in adversarial]
    else:
        pool = [b for b in read_behaviors(dataset_path("advbench")) if b.behavior not in used]
        behaviors = rng.sample(pool, n - n // 2)
        log = args.out.with_name(f"{args.out.stem}.{name}.gcg.jsonl")
        found = smol_gcg(model, behaviors, log, args.gcg_forwards, args.max_new_tokens)
        items = [{**a, "detail": f"GCG suffix found on this model ({args.gcg_forwards} candidate rows, 16 per step)"}
                 for a in found]
        items += [{**a, "detail": f"{a['method']} adversarial prompt found on {QWEN}, transferred ({a['file']})"}
                  for a in rng.sample(adversarial, n // 2)]
    add(items, "attacked", "")

    out, seen = [], set(existing)
    for row in rows:
        key = (name, row["prompt"], row["response"])
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", choices=sorted(MODELS), help="repeat for several (default: both)")
    ap.add_argument("--out", type=Path, default=Path("out/judge_labels/candidates.json"))
    ap.add_argument("--n", type=int, default=32, help="outputs per (model, condition) before dedup")
    ap.add_argument("--n-train", type=int, default=32, help="training prompts per class for the refusal direction")
    ap.add_argument("--max-new-tokens", type=int, default=80)
    ap.add_argument("--gcg-forwards", type=int, default=128, help="candidate rows per behaviour, SmolLM2's GCG")
    ap.add_argument("--existing", type=Path, default=EXISTING,
                    help="labelled records; those without a `condition` are not drawn again")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # the records labelled before this script (no `condition`; all Qwen's, their `source` says): its own records,
    # already in the file once labelled, are left out, so that a rerun draws the same outputs again
    existing = {(r.get("model", QWEN), r["prompt"], r["response"]) for r in json.loads(args.existing.read_text())
                if "condition" not in r}
    records = []
    for name in args.model or list(MODELS):
        records += candidates(name, args, existing)
        print(f"{name}: {sum(r['model'] == name for r in records)} outputs", flush=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return write_result(args.out, {"settings": settings, "models": {k: dict(v) for k, v in MODELS.items()},
                                   "records": records}, provenance("benchmarks.judge_labels", argv, "cpu"))


if __name__ == "__main__":
    main()
