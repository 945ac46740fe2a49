"""`make demo` / `interp demo`: the main job of the toolkit, end to end on a real chat model."""

from __future__ import annotations

import random
from pathlib import Path

from analyses import refusal, separation
from interp.core.model import DEFAULT_SYSTEM, System
from interp.data.prompts import dataset
from interp.io import write_json
from interp.judges import SubstringJudge


def run_demo(model_name: str, out: Path, n: int = 64, n_show: int = 3, max_new_tokens: int = 48) -> Path:
    import interp

    out = Path(out)
    print(f"loading {model_name} ...", flush=True)
    model = interp.load(model_name)
    harmful, harmless = dataset("harmful_train", n=n), dataset("harmless_train", n=n)

    print(f"1/3 per-layer separation of {n} harmful vs {n} harmless prompts", flush=True)
    sep = separation.run(model, separation.SeparationData(harmful, harmless))
    sep.save(out / "separation")
    best = sep.report.best_layer()
    print(f"    best held-out probe accuracy at layer {best}: {max(sep.report.test_accuracy['logistic']):.2f}")

    print("2/3 refusal direction (Arditi et al. 2024): candidates at every end-of-instruction position x layer", flush=True)
    res = refusal.run(model, refusal.RefusalData(harmful, harmless))
    c = res.chosen
    for line in res.messages():  # filter counts and every relaxation, not only in the JSON
        print(f"    {line}")
    if res.relaxations:
        print("    (some checks were loosened; what that means for this result is explained at the end)")
    print(f"    chosen layer {c['layer']}, position {c['position']} ({c['token']!r}); refusal score under ablation "
          f"{c['ablation_score']:.2f} vs baseline {res.baseline['harmful_refusal_score']:.2f}; KL {c['kl']:.3f}; "
          f"system={res.system!r}")

    print("3/3 greedy answers with and without the direction", flush=True)
    shown_h = refused_examples(model, dataset("harmful_val"), n_show, max_new_tokens, system=res.system)
    if len(shown_h) < n_show:
        print(f"    the model refuses only {len(shown_h)} of the harmful validation prompts checked; showing those")
    shown_h = shown_h or dataset("harmful_val", n=n_show)
    ev = refusal.evaluate(model, res.direction, shown_h, dataset("harmless_val", n=n_show),
                          max_new_tokens=max_new_tokens, system=res.system)
    res.evaluation = {k: v for k, v in ev.items()}
    g = ev["generations"]
    judge = SubstringJudge()
    for i in range(len(shown_h)):
        still = "still refused" if judge.refused([g["harmful_ablated"][i]])[0] else "not refused"
        print(f"\n  harmful: {g['harmful'][i]}\n    baseline: {g['harmful_baseline'][i][:160]!r}\n    "
              f"ablated ({still}):  {g['harmful_ablated'][i][:160]!r}")
    for i in range(n_show):
        print(f"\n  harmless: {g['harmless'][i]}\n    baseline: {g['harmless_baseline'][i][:160]!r}\n    added:    {g['harmless_added'][i][:160]!r}")
    res.save(out / "refusal")
    notes = refusal.explain_relaxations(res, model_name, n)
    write_json(out / "summary.json", {"model": model.fingerprint, "separation_best_layer": best,
                                      "refusal": {"chosen": c, "baseline": res.baseline, "rates": ev["refusal_rate"],
                                                  "judge_fp_rate": ev["judge_fp_rate"], "filter_counts": res.filter_counts,
                                                  "relaxations": res.relaxations, "system": res.system,
                                                  "notes": notes}})
    print()
    print("\n".join(ev.lines()))
    print()
    print("\n".join(notes))
    print(f"wrote {out / 'separation' / 'report.html'}, {out / 'refusal' / 'report.html'} and the direction in {out / 'refusal'}")
    return out


def refused_examples(model, pool: list[str], n: int, max_new_tokens: int, check: int = 16,
                     system: System = DEFAULT_SYSTEM) -> list[str]:
    """Up to `n` prompts of `pool` that the model refuses at baseline (substring judge on greedy answers of
    `max_new_tokens` tokens to the prompts chat-formatted with `system`), checking at most `check` prompts (a
    seeded draw)."""
    candidates = [pool[i] for i in random.Random(0).sample(range(len(pool)), min(check, len(pool)))]
    answers = model.generate(candidates, max_new_tokens=max_new_tokens, system=system)
    return [p for p, r in zip(candidates, SubstringJudge().refused(answers)) if r][:n]
