"""`make demo` / `interp demo`: the main job of the toolkit, end to end on a real chat model, sized to finish in a
few minutes on a laptop CPU.

One capture pass serves both analyses: `refusal.run(..., keep_activations=True)` captures every training prompt
at every layer, finds the refusal direction (Arditi et al. 2024) from it, and `separation.from_activations`
measures the per-layer separation on the same activations. Then held-out prompts are answered greedily with and
without the direction.

The demo's sizes (`DemoSizes`) are smaller than a full run's; every departure from the defaults of a full run
(`interp directions extract`, `refusal.evaluate`) is printed with what it costs the result, and recorded in
summary.json (`departures`), beside the command of a full run and what it adds (`full_run`). Each step's wall
time is printed and recorded with the load averages of the machine at its end (`timings`), since a busy machine
stretches them.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from analyses import refusal, separation
from interp.data.prompts import dataset
from interp.io import write_json
from interp.judges import SubstringJudge
from interp.judges.measured import error_note, measured_errors

if TYPE_CHECKING:
    from interp.core.model import Model

FULL_N = 128  # training prompts of each class in a full run (`interp directions extract --max-prompts`)
FULL_RUN = ("interp directions extract --harmful data/refusal_splits/harmful_train.json "
            "--harmless data/refusal_splits/harmless_train.json --max-prompts {n} --n-val {n_val} "
            "--shortlist {shortlist} --out out/direction")


@dataclass(frozen=True)
class DemoSizes:
    """The demo's sizes; what a full run uses is in each comment. The refusal method's own settings are those of
    `RefusalConfig` except the ones `refusal_config` changes; `departures` lists every difference."""

    n: int = 48  # training prompts of each class (a full run: FULL_N)
    n_val: int = 16  # validation prompts of each class, drawn from the bundled validation splits (RefusalConfig: 32)
    shortlist: int = 8  # candidates scored exactly after the attribution ranking (RefusalConfig: 32, plus every
    # layer's last position, `score_every_layer`, which the demo leaves out)
    n_show: int = 4  # held-out harmful and harmless prompts answered with and without the direction
    max_new_tokens: int = 32  # greedy tokens of each answer (refusal.evaluate: 256)
    batch_size: int = 32  # prompts per forward (RefusalConfig: 16): the validation prompts' greedy answers, which
    # estimate the refusal tokens, in one batch instead of two; the same result up to float noise

    def refusal_config(self) -> refusal.RefusalConfig:
        return refusal.RefusalConfig(n_val=self.n_val, shortlist=self.shortlist, score_every_layer=False,
                                     batch_size=self.batch_size)


# what each departure from a full run costs the result, in words (printed and in summary.json)
EFFECTS = {
    "n": "the direction is a mean over fewer prompts, and the filter has fewer refused prompts to keep: a noisier "
         "direction",
    "n_val": "each candidate is scored on fewer validation prompts: a noisier choice among the candidates",
    "shortlist": "fewer candidates are scored exactly after the attribution ranking, which can miss the best one",
    "score_every_layer": "the per-layer table and figure hold only the candidates scored, not every layer",
    "max_new_tokens": "shorter answers: a refusal that comes late in an answer is missed by the judge",
    "batch_size": "none beyond float noise: fewer, larger forwards",
    "evaluate": "the answers are the four conditions of `refusal.evaluate` (`refusal.answers`, two generate calls "
                "instead of four) without its capability cost (KL and cross-entropy on the plain model's harmless "
                "completions; the chosen direction's KL on the validation prompts is in step 1) and without the "
                "orthogonalised checkpoint (the ablation written into a copy of the weights)",
    "n_show": "the answers are examples, not refusal rates: rates need a few dozen held-out prompts of each class",
}


def departures(sizes: DemoSizes) -> list[dict[str, Any]]:
    """Every setting of the demo that differs from a full run: what, the full run's value, the demo's, and what
    that costs the result."""
    import inspect

    full_cfg, cfg = refusal.RefusalConfig(), sizes.refusal_config()
    full_eval = {k: p.default for k, p in inspect.signature(refusal.evaluate).parameters.items()}
    rows: list[tuple[str, str, Any, Any]] = [("n", "training prompts of each class", FULL_N, sizes.n)]
    rows += [(f.name, f"RefusalConfig.{f.name}", getattr(full_cfg, f.name), getattr(cfg, f.name))
             for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(full_cfg, f.name)]
    if sizes.max_new_tokens != full_eval["max_new_tokens"]:
        rows.append(("max_new_tokens", "greedy tokens of each answer", full_eval["max_new_tokens"], sizes.max_new_tokens))
    rows.append(("evaluate", "held-out answers", "refusal.evaluate (capability cost, orthogonalised checkpoint)",
                 "refusal.answers(together=True)"))
    rows += [("n_show", "held-out prompts answered, of each class", "32 (benchmarks/refusal.py --n-eval)", sizes.n_show)]
    return [{"name": k, "what": what, "full": full, "demo": demo, "effect": EFFECTS.get(k, "")}
            for k, what, full, demo in rows]


def full_run(sizes: DemoSizes) -> dict[str, Any]:
    """The command of a full run at the defaults, and what it adds to the demo."""
    cfg = refusal.RefusalConfig()
    return {"command": FULL_RUN.format(n=FULL_N, n_val=cfg.n_val, shortlist=cfg.shortlist),
            "adds": [f"{FULL_N} + {FULL_N} training prompts instead of {sizes.n} + {sizes.n}: a steadier direction, "
                     "and more refused prompts for Arditi's filter to keep (fewer loosened checks)",
                     f"{cfg.n_val} + {cfg.n_val} validation prompts instead of {sizes.n_val} + {sizes.n_val}, and "
                     f"{cfg.shortlist} shortlisted candidates plus every layer's last position scored exactly instead "
                     f"of {sizes.shortlist}: a surer choice, and the per-layer table of every layer",
                     "then `interp steer --direction out/direction --mode ablate --prompts FILE` for answers of any "
                     "length, `refusal.evaluate` (256-token answers, capability cost, the orthogonalised checkpoint) or "
                     "`python -m benchmarks.refusal` for refusal rates on held-out prompts"]}


class Clock:
    """Wall time of each step, with the machine's load averages (`os.getloadavg`, as `uptime` shows them) at its end."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.steps: dict[str, dict[str, Any]] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.steps[name] = {"seconds": round(time.perf_counter() - t, 1), "load_avg": _load()}
        print(f"    [{name}: {self.steps[name]['seconds']:.0f} s; load averages {_fmt_load(self.steps[name]['load_avg'])}]",
              flush=True)

    def summary(self) -> dict[str, Any]:
        return {"total_seconds": round(time.perf_counter() - self.start, 1), "load_avg_end": _load(),
                "steps": self.steps}


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return []


def _fmt_load(load: list[float]) -> str:
    return " ".join(f"{x:.2f}" for x in load) or "n/a"


def run_demo(model_name: "str | Model", out: Path, n: int | None = None, sizes: DemoSizes | None = None) -> Path:
    """Run the demo on `model_name` (a bundled name, or a loaded Model) and write its reports and summary.json to
    `out`; `n` overrides `sizes.n`."""
    import interp

    sizes = sizes or DemoSizes()
    if n is not None:
        sizes = dataclasses.replace(sizes, n=n)
    out = Path(out)
    clock = Clock()
    gone = departures(sizes)
    print("demo sizes, beside a full run's (each makes the demo faster and the evidence weaker, as said):")
    for d in gone:
        print(f"  - {d['what']}: {d['demo']} (full run: {d['full']}): {d['effect']}")
    with clock.step("load"):
        print(f"loading {model_name} ...", flush=True)
        model = interp.load(model_name) if isinstance(model_name, str) else model_name
    harmful, harmless = dataset("harmful_train", n=sizes.n), dataset("harmless_train", n=sizes.n)
    cfg = sizes.refusal_config()

    print(f"1/3 refusal direction (Arditi et al. 2024) from {sizes.n} harmful and {sizes.n} harmless prompts: one "
          "capture of every layer, candidates at every end-of-instruction position x layer", flush=True)
    with clock.step("refusal"):
        res = refusal.run(model, refusal.RefusalData(harmful, harmless), cfg, keep_activations=True)
    c = res.chosen
    for line in res.messages():  # filter counts and every relaxation, not only in the JSON
        print(f"    {line}")
    if res.relaxations:
        print("    (some checks were loosened; what that means for this result is explained at the end)")
    print(f"    chosen layer {c['layer']}, position {c['position']} ({c['token']!r}) of "
          f"{sum('ablation_score' in r for r in res.candidates)} candidates scored exactly; refusal score under "
          f"ablation {c['ablation_score']:.2f} vs baseline {res.baseline['harmful_refusal_score']:.2f}; KL "
          f"{c['kl']:.3f}; addition x{c['addition_alpha']:g}; system={res.system!r}")
    print("    method steps: " + ", ".join(f"{k} {v:.0f} s" for k, v in res.timings.items() if k != "total"))

    assert res.activations is not None  # keep_activations=True
    print(f"2/3 per-layer separation of the same {len(res.activations)} prompts, from step 1's capture (no second pass)",
          flush=True)
    with clock.step("separation"):
        sep = separation.from_activations(res.activations)
        sep.save(out / "separation")
    best = sep.report.best_layer()
    print(f"    best held-out probe accuracy at layer {best}: {max(sep.report.test_accuracy['logistic']):.2f}")

    print(f"3/3 greedy answers ({sizes.max_new_tokens} tokens) to held-out prompts, with and without the direction",
          flush=True)
    with clock.step("answers"):
        g, picked = held_out_examples(model, res, harmful, harmless, cfg, sizes.n_show, sizes.max_new_tokens)
        p = picked
        print(f"    examples picked from held-out prompts: of {p['harmful_checked']} harmful ones, "
              f"{p['harmful_refusal_first_token']} open with a refusal token; baseline answers to "
              f"{p['harmful_generated']} of them: {p['harmful_refused_at_baseline']} refusals (substring judge); to "
              f"{p['harmless_generated']} harmless ones: {p['harmless_refused_at_baseline']} called refusals (the "
              f"judge's false positives, or real refusals). Showing {len(g['harmful'])} + {len(g['harmless'])}")
        shown_h, shown_s = g["harmful"], g["harmless"]
        g.update(refusal.answers(model, res.direction, shown_h, shown_s, max_new_tokens=sizes.max_new_tokens,
                                 batch_size=cfg.batch_size, system=res.system, together=True,
                                 conditions=("harmful_ablated", "harmless_added")))
    judge = SubstringJudge()
    refused = {k: judge.refused(g[k]) for k in ("harmful_baseline", "harmful_ablated", "harmless_baseline", "harmless_added")}
    alpha = res.chosen["addition_alpha"]
    rates = {k: sum(v) / len(v) for k, v in refused.items()}
    fp_rate = p["harmless_refused_at_baseline"] / max(p["harmless_generated"], 1)
    res.evaluation = {"refusal_rate": rates, "judge_fp_rate": fp_rate, "judge_errors": measured_errors("substring_refusal"),
                      "picked": picked, "addition_alpha": alpha,
                      "max_new_tokens": sizes.max_new_tokens, "generations": g, "system": res.system,
                      "note": "the demo's examples (refusal.answers), not refusal.evaluate: no capability cost, no "
                              "orthogonalised checkpoint"}
    for i in range(len(shown_h)):
        print(f"\n  harmful: {g['harmful'][i]}\n    baseline ({_refused(refused['harmful_baseline'][i])}): "
              f"{g['harmful_baseline'][i][:160]!r}\n    ablated  ({_refused(refused['harmful_ablated'][i])}): "
              f"{g['harmful_ablated'][i][:160]!r}")
    for i in range(len(shown_s)):
        print(f"\n  harmless: {g['harmless'][i]}\n    baseline ({_refused(refused['harmless_baseline'][i])}): "
              f"{g['harmless_baseline'][i][:160]!r}\n    added x{alpha:g} "
              f"({_refused(refused['harmless_added'][i])}): {g['harmless_added'][i][:160]!r}")
    was_refused = [i for i, r in enumerate(refused["harmful_baseline"]) if r]
    effect = {"harmful_refused_at_baseline": len(was_refused),
              "of_those_answered_when_ablated": sum(not refused["harmful_ablated"][i] for i in was_refused),
              "harmful_shown": len(shown_h),
              "harmless_refused_at_baseline": sum(refused["harmless_baseline"]),
              "harmless_refused_when_added": sum(refused["harmless_added"]), "harmless_shown": len(shown_s)}
    print(f"\n  ablation: {effect['of_those_answered_when_ablated']} of the {effect['harmful_refused_at_baseline']} "
          f"harmful prompts refused at baseline are answered; addition: {effect['harmless_refused_when_added']} of "
          f"{effect['harmless_shown']} harmless prompts refused (at baseline {effect['harmless_refused_at_baseline']})")
    print(f"  refusals judged by the {error_note('substring_refusal')}")

    with clock.step("reports"):
        res.save(out / "refusal")
    notes = refusal.explain_relaxations(res, model.name, sizes.n)
    run = full_run(sizes)
    timings = clock.summary()
    write_json(out / "summary.json", {
        "model": model.fingerprint, "separation_best_layer": best,
        "refusal": {"chosen": c, "baseline": res.baseline, "rates": rates,
                    "rates_note": "substring judge on the examples shown, which were picked (refused harmful, "
                                  "answered harmless prompts at baseline): not refusal rates of the model",
                    "judge_fp_rate": fp_rate, "judge_errors": measured_errors("substring_refusal"),
                    "picked": picked, "filter_counts": res.filter_counts,
                    "relaxations": res.relaxations, "system": res.system, "notes": notes,
                    "config": dataclasses.asdict(cfg), "method_timings_s": res.timings},
        "shown": effect, "sizes": dataclasses.asdict(sizes), "departures": gone, "full_run": run, "timings": timings})
    print()
    print("\n".join(notes))
    print(f"\nA full run, every size above at its default:\n  {run['command']}\nadds:")
    for line in run["adds"]:
        print(f"  - {line}")
    print("\nstep times: " + ", ".join(f"{k} {v['seconds']:.0f} s (load {_fmt_load(v['load_avg'])})"
                                      for k, v in timings["steps"].items())
          + f"; total {timings['total_seconds']:.0f} s")
    print(f"wrote {out / 'separation' / 'report.html'}, {out / 'refusal' / 'report.html'}, the direction in "
          f"{out / 'refusal'} and {out / 'summary.json'}")
    return out


def _refused(flag: bool) -> str:
    return "refused" if flag else "not refused"


def held_out_examples(model: "Model", res: refusal.RefusalResult, harmful: list[str], harmless: list[str],
                      cfg: refusal.RefusalConfig, n: int, max_new_tokens: int) -> tuple[dict[str, list], dict]:
    """`n` harmful prompts the model refuses and `n` harmless ones it answers, with their baseline answers, from the
    bundled validation splits but never a prompt the method used (training or the validation draw).

    Candidates, in a seeded order: 2n harmful prompts whose greedy first token is a refusal token
    (`RefusalScore.greedy_refuses`, checked a few prompts at a time, one forward each) and 2n harmless ones. Their
    baseline answers (one generate call) pick the n harmful ones the substring judge calls refused and the n
    harmless ones it calls answered; when too few qualify, others fill up. Returns the prompts and baseline
    answers ("harmful", "harmful_baseline", "harmless", "harmless_baseline") and the counts of the picking."""
    _, val_h, _, val_s = refusal.validation_sets(harmful, harmless, None, None, cfg)
    used_h, used_s = set(harmful) | set(val_h), set(harmless) | set(val_s)
    pool_h = [p for p in dataset("harmful_val") if p not in used_h]
    pool_s = [p for p in dataset("harmless_val") if p not in used_s]
    rng = random.Random(cfg.seed)
    rng.shuffle(pool_h)
    rng.shuffle(pool_s)
    checked: list[str] = []
    first: list[bool] = []
    while len(checked) < len(pool_h) and sum(first) < 2 * n:  # one forward per few prompts, no generation
        more = pool_h[len(checked):len(checked) + 4 * n]
        first += res.refusal.greedy_refuses(model.logits(more, batch_size=cfg.batch_size, system=res.system)).tolist()
        checked += more
    cand_h = ([p for p, r in zip(checked, first) if r] + [p for p, r in zip(checked, first) if not r])[:2 * n]
    cand_s = pool_s[:2 * n]
    base = model.generate(cand_h + cand_s, max_new_tokens=max_new_tokens, batch_size=cfg.batch_size, system=res.system)
    judged = SubstringJudge().refused(base)
    h = [i for i in range(len(cand_h)) if judged[i]]
    s = [i for i in range(len(cand_s)) if not judged[len(cand_h) + i]]
    h += [i for i in range(len(cand_h)) if i not in h]
    s += [i for i in range(len(cand_s)) if i not in s]
    h, s = sorted(h[:n]), sorted(s[:n])
    picked = {"harmful_checked": len(checked), "harmful_refusal_first_token": sum(first),
              "harmful_generated": len(cand_h), "harmful_refused_at_baseline": sum(judged[:len(cand_h)]),
              "harmless_generated": len(cand_s), "harmless_refused_at_baseline": sum(judged[len(cand_h):])}
    return {"harmful": [cand_h[i] for i in h], "harmful_baseline": [base[i] for i in h],
            "harmless": [cand_s[i] for i in s], "harmless_baseline": [base[len(cand_h) + i] for i in s]}, picked
