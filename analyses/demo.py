"""`make demo` / `interp demo`: the main job of the toolkit, end to end on a real chat model."""

from __future__ import annotations

from pathlib import Path

from analyses import refusal, separation
from interp.io import write_json
from interp.prompts import dataset


def run_demo(model_name: str, out: Path, n: int = 64, n_show: int = 3, max_new_tokens: int = 48) -> Path:
    import interp

    out = Path(out)
    print(f"loading {model_name} ...", flush=True)
    model = interp.load(model_name)
    harmful, harmless = dataset("harmful_train", n=n), dataset("harmless_train", n=n)

    print(f"1/3 per-layer separation of {n} harmful vs {n} harmless prompts", flush=True)
    sep = separation.run(model, harmful, harmless)
    sep.save(out / "separation")
    best = sep.report.best_layer()
    print(f"    best held-out probe accuracy at layer {best}: {max(sep.report.test_accuracy['logistic']):.2f}")

    print("2/3 refusal direction (Arditi et al. 2024): candidates at every end-of-instruction position x layer", flush=True)
    res = refusal.run(model, harmful, harmless)
    c = res.chosen
    print(f"    chosen layer {c['layer']}, position {c['position']} ({c['token']!r}); refusal score under ablation "
          f"{c['ablation_score']:.2f} vs baseline {res.baseline['harmful_refusal_score']:.2f}; KL {c['kl']:.3f}")

    print("3/3 greedy answers with and without the direction", flush=True)
    ev = refusal.evaluate(model, res.direction, dataset("harmful_val", n=n_show), dataset("harmless_val", n=n_show),
                          max_new_tokens=max_new_tokens)
    res.evaluation = {k: v for k, v in ev.items()}
    g = ev["generations"]
    for i in range(n_show):
        print(f"\n  harmful: {g['harmful'][i]}\n    baseline: {g['harmful_baseline'][i][:160]!r}\n    ablated:  {g['harmful_ablated'][i][:160]!r}")
    for i in range(n_show):
        print(f"\n  harmless: {g['harmless'][i]}\n    baseline: {g['harmless_baseline'][i][:160]!r}\n    added:    {g['harmless_added'][i][:160]!r}")
    res.save(out / "refusal")
    write_json(out / "summary.json", {"model": model.fingerprint, "separation_best_layer": best,
                                      "refusal": {"chosen": c, "baseline": res.baseline, "rates": ev["refusal_rate"]}})
    print(f"\nrefusal rates (substring judge, {max_new_tokens} tokens): {ev['refusal_rate']}")
    print(f"wrote {out / 'separation' / 'report.html'}, {out / 'refusal' / 'report.html'} and the direction in {out / 'refusal'}")
    return out
