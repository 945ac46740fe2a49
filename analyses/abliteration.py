"""Abliteration search (heretic, p-e-w/heretic): where the refusal direction comes from and how strongly each
layer's writes are ablated, found by multi-objective Optuna TPE that minimises refusals and KL together.

The method, as heretic does it (v1.0, the version behind its README's results):
1. Directions. The residual stream after every layer (`hook_resid_post`), at the last prompt token, for
   harmful and harmless prompts; per layer the unit difference of the class means (`DiffInMeans`).
2. Parameters of a trial. `direction_scope` global or per layer. Global: one direction taken at a fractional
   layer index `direction_index` in [0.4, 0.9] x (n_layers - 1), interpolating linearly between the unit
   directions of the two neighbouring layers (then renormalised). Per layer: layer l's edit uses layer l's own
   direction. For each component (`attn.o_proj`, `mlp.down_proj`) a weight kernel over layers: `max_weight`
   in [0.8, 1.5] at `max_weight_position` in [0.6, 1.0] x (n_layers - 1), falling linearly to `min_weight`
   (sampled as a fraction in [0, 1] of max_weight) at `min_weight_distance` in [1, 0.6 x (n_layers - 1)]
   layers away, and 0 beyond. Layer l's output projection becomes W <- W - w_l r r^T W.
3. Objectives, both minimised: refusals on harmful prompts and first-token KL(plain || edited) on harmless
   prompts (heretic: `F.kl_div(edited, plain, log_target=True, reduction="batchmean")`). Optuna
   `TPESampler(multivariate=True, n_startup_trials=60, n_ei_candidates=128)`; heretic runs 200 trials. Here the
   sampler is seeded per trial from `seed` and the trial's index (`_sampler`), so a study resumed from its SQLite
   storage asks the trials an uninterrupted one asks.
4. The Pareto front of the trials; heretic lets the user pick a point from it.

Which prompts decide what (each split is named in the Result: `splits`, the figure titles):
- validation (`harmful_val`, `harmless_val`): the trials are scored on them (heretic scores its trials on its
  `*_evaluation_prompts`), and the Pareto points are then judged on the same prompts by generation and the
  substring judge; the point is chosen there, and the Pareto front judged on validation is the analysis's figure.
- test (`harmful_test`, `harmless_test`, optional, disjoint from the training and validation prompts): only the
  chosen point, the reference and the unedited model are judged on them, after the choice, so no test judgement
  can steer the choice or the search. Without test prompts the chosen point's only figures are the validation
  ones it was chosen on (optimistic), and the Result says so.
heretic itself (`src/heretic/main.py`, `evaluator.py`: `Evaluator.get_score`) scores every trial on its evaluation
prompts and lets the user pick from the Pareto front of those same scores; it has no further held-out judgement.
The test judgement here is an addition, not a departure.

Departures, each a named option recorded in the Result (`config` and `departures`):
- `trial_refusals="first_token"` (default): a trial's refusal count is the number of harmful validation prompts
  whose greedy first token is a refusal token (`RefusalScore.greedy_refuses`; the score > 0 rule misses
  the greedy refusals made at p < 0.5: benchmarks/results/refusal_qwen05.json, `filter_counts`), read off the same
  single batched forward that gives the KL, instead of heretic's greedy generation (100 tokens) judged by refusal
  substrings (`trial_refusals="generate"` does that, at `trial_max_new_tokens`). The Pareto points are then judged
  by generation (`max_new_tokens`) and the substring judge on the validation prompts, so the cheap proxy never
  decides the choice alone.
- `choose`: heretic asks the user; here the chosen point is, among the Pareto points judged on the validation
  prompts, the fewest refusals with KL <= `kl_budget` (ties: lower KL; none under budget: the lowest KL, said so).
  `choose` is given the validation judgements only.
- The per-layer direction of the last layer is its `hook_resid_post` before the final norm (heretic reads HF's
  last hidden state, which is after the norm); this only touches the last layer's per-layer direction.
- `system`: the library's `DEFAULT_SYSTEM` (None, the chat template's own system prompt) unless set (heretic sends
  "You are a helpful assistant."); recorded in the Result (`system`).
- Later heretic versions add a KL target, an MLP weight lower bound of -0.25 and row normalisation; not here.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from interp.core.interventions import Intervention, WeightedAblate
from interp.core.model import DEFAULT_SYSTEM, System, system_option, system_record
from interp.core.progress import Checkpoint, Progress, digest, model_settings
from interp.core.result import Result
from interp.directions.estimators import DiffInMeans
from interp.directions.scoring import Reference, capability_cost, kl_rows, reference_completions
from interp.errors import InterpError
from interp.io import write_json, write_tensors
from interp.judges import RefusalScore, SubstringJudge
from interp.judges.measured import measured_errors

if TYPE_CHECKING:
    from interp.core.model import Model

COMPONENTS = {"attn": "attn.o_proj", "mlp": "mlp.down_proj"}  # our name -> heretic's parameter prefix


@dataclass
class AbliterationConfig:
    n_trials: int = 200  # heretic's default
    n_startup_trials: int = 60  # heretic's default: random trials before TPE models the front
    seed: int = 0
    trial_refusals: str = "first_token"  # "first_token" (one forward: greedy first token a refusal token) | "generate" (heretic)
    trial_max_new_tokens: int = 100  # heretic's max_response_length, for trial_refusals="generate"
    max_new_tokens: int = 256  # greedy tokens of the judged answers (Pareto points on validation; chosen point on test)
    final_points: int | None = None  # judge at most this many Pareto points on validation (spread along the front by KL); None: all
    kl_budget: float = 0.1  # the chosen point: fewest validation refusals with KL <= this (Arditi et al.'s KL filter)
    system: System = DEFAULT_SYSTEM  # "default"/None (the chat template's), "none"/NO_SYSTEM (no system turn), or a text
    batch_size: int = 64  # prompts per forward (a trial's harmful + harmless prompts in one forward when they fit)
    refusal_new_tokens: int = 8  # greedy tokens to estimate the refusal tokens (RefusalScore.fit)

    @property
    def system_value(self) -> System:
        """What `Model` calls take as `system` (`interp.core.model.system_option`: "none" -> no system turn)."""
        return system_option(self.system)


@dataclass
class Kernel:
    """heretic's per-component weight kernel over layers."""

    max_weight: float
    max_weight_position: float
    min_weight: float
    min_weight_distance: float


def kernel_weights(n_layers: int, k: Kernel) -> list[float]:
    """Weight of each layer: max_weight at max_weight_position, linear to min_weight at min_weight_distance
    layers away, 0 beyond (heretic's `abliterate`)."""
    if k.min_weight_distance <= 0:
        raise InterpError(f"min_weight_distance must be > 0, got {k.min_weight_distance}")
    out = []
    for layer in range(n_layers):
        dist = abs(layer - k.max_weight_position)
        out.append(0.0 if dist > k.min_weight_distance else
                   k.max_weight + dist / k.min_weight_distance * (k.min_weight - k.max_weight))
    return out


def interpolated_direction(directions: Float[Tensor, "layer d"], index: float) -> Float[Tensor, "d"]:
    """The unit direction at a fractional layer index: lerp between the unit directions of layers floor(index)
    and floor(index) + 1, renormalised (heretic's global direction)."""
    n = directions.shape[0]
    if not 0 <= index <= n - 1:
        raise InterpError(f"direction index {index} is outside the layers 0..{n - 1}")
    lo = min(int(math.floor(index)), n - 2) if n > 1 else 0
    frac = index - lo
    units = directions / directions.norm(dim=-1, keepdim=True)
    v = torch.lerp(units[lo], units[min(lo + 1, n - 1)], frac)
    return v / v.norm()


@dataclass
class Point:
    """One abliteration: where the direction comes from and the per-layer weights of each component."""

    direction_index: float | None  # None: per-layer directions
    kernels: dict[str, Kernel]

    def directions(self, per_layer: Float[Tensor, "layer d"]) -> Float[Tensor, "layer d"]:
        if self.direction_index is None:
            return per_layer / per_layer.norm(dim=-1, keepdim=True)
        return interpolated_direction(per_layer, self.direction_index).expand_as(per_layer).clone()

    def weights(self, n_layers: int) -> dict[str, list[float]]:
        return {c: kernel_weights(n_layers, self.kernels[c]) for c in COMPONENTS}

    def intervention(self, per_layer: Float[Tensor, "layer d"]) -> WeightedAblate:
        w = self.weights(per_layer.shape[0])
        return WeightedAblate(self.directions(per_layer), w["attn"], w["mlp"])

    def to_dict(self) -> dict:
        return {"direction_index": self.direction_index, "kernels": {c: asdict(k) for c, k in self.kernels.items()}}


def per_layer_directions(model: "Model", harmful: Sequence[str], harmless: Sequence[str], system: System = DEFAULT_SYSTEM,
                         batch_size: int = 16) -> Float[Tensor, "layer d"]:
    """Unit difference-in-means directions of `hook_resid_post` at the last prompt token, one per layer."""
    acts = model.capture(list(harmful) + list(harmless), "hook_resid_post", positions="last", batch_size=batch_size,
                         labels=[1] * len(harmful) + [0] * len(harmless), system=system)
    X = acts.stack("hook_resid_post")  # [n, layer, d]
    return DiffInMeans(normalize=True).fit(X, torch.tensor(acts.labels)).directions_


def pareto_front(values: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (both coordinates minimised); equal points are all kept."""
    front = []
    for i, a in enumerate(values):
        dominated = any(b[0] <= a[0] and b[1] <= a[1] and (b[0] < a[0] or b[1] < a[1]) for b in values)
        if not dominated:
            front.append(i)
    return front


def _brief(judgement: dict | None) -> dict | None:
    """A judgement without its answers (for tables and titles)."""
    return None if judgement is None else {k: v for k, v in judgement.items() if k != "answers"}


@dataclass
class AbliterationSearchResult(Result):
    """The search's trials, its Pareto front judged on the validation prompts (where the point is chosen), and the
    chosen point, the reference and the unedited model judged on the test prompts (`test`; None without them).
    Which split each number and figure comes from: `splits` in the summary, and every figure's title."""

    trials: list[dict]  # every trial: params, point, proxy refusals and first-token KL on the validation prompts
    pareto: list[int]  # trial numbers on the proxy Pareto front
    validation: list[dict]  # the (spread) Pareto points judged on the validation prompts: the choice is made here
    chosen: dict  # trial, rule, chosen_on, and its "validation" and "test" figures (test: None without test prompts)
    reference: dict | None  # name; proxy, "validation" and "test" judgements (or a given pair: "given")
    baseline: dict  # the unedited model: proxy refusals, and "validation" / "test" judgements
    test: dict | None  # the test judgement: n prompts, and "baseline", "chosen", "reference" (only these are judged)
    directions: Tensor  # [layer, d] per-layer unit directions
    n_layers: int
    config: AbliterationConfig
    departures: dict
    timings: dict
    title: str = "Abliteration search (heretic: Optuna TPE over direction and per-layer weights)"

    @property
    def chosen_point(self) -> Point:
        p = self.trials[self.chosen["trial"]]["point"]
        return Point(p["direction_index"], {c: Kernel(**k) for c, k in p["kernels"].items()})

    def chosen_weights(self) -> dict[str, list[float]]:
        return self.chosen_point.weights(self.n_layers)

    def chosen_directions(self) -> Tensor:
        return self.chosen_point.directions(self.directions)

    @property
    def splits(self) -> dict:
        """Which prompts each part of the Result was measured on."""
        test = ("test: the chosen point, the reference and the unedited model only, judged after the choice"
                if self.test is not None else None)
        return {"trials": f"validation ({self.config.trial_refusals} proxy refusals, first-token KL)",
                "pareto_front": "validation (generation + substring judge; first-token KL and CE on the harmless validation "
                                "prompts)",
                "chosen_on": self.chosen["chosen_on"], "test": test,
                "figures": {"validation": "validation", "pareto": "validation (trial proxy)",
                            **({"test": "test"} if self.test is not None else {}), "weights": "the chosen point"},
                **({} if self.test is not None else
                   {"note": "no test prompts: the chosen point's figures are on the validation prompts it was chosen "
                            "on, an optimistic estimate"})}

    def summary(self) -> dict:
        return {"chosen": self.chosen, "chosen_weights": self.chosen_weights(), "splits": self.splits,
                "baseline": self.baseline, "reference": _brief(self.reference),
                "validation": [_brief(f) for f in self.validation], "test": self._test_brief(),
                "pareto": [self.trials[i] for i in self.pareto], "n_trials": len(self.trials),
                "config": asdict(self.config), "system": system_record(self.config.system),
                "departures": self.departures, "timings_s": self.timings,
                "judge_errors": measured_errors("substring_refusal")}

    def _test_brief(self) -> dict | None:
        if self.test is None:
            return None
        return {k: (_brief(v) if isinstance(v, dict) else v) for k, v in self.test.items()}

    def figures(self) -> dict[str, go.Figure]:
        figs = {}
        n_h = self.baseline["n_harmful_val"]
        fig = go.Figure(layout=dict(title=f"validation prompts, trials: refusals ({self.config.trial_refusals} proxy, "
                                          f"{n_h} harmful) vs first-token KL (harmless)",
                                    xaxis=dict(title="KL(plain || edited)"), yaxis=dict(title="refusals")))
        fig.add_scatter(x=[t["kl"] for t in self.trials], y=[t["refusals"] for t in self.trials], mode="markers",
                        name="trial", marker=dict(color="lightgray"), text=[f"trial {t['trial']}" for t in self.trials])
        front = sorted(self.pareto, key=lambda i: self.trials[i]["kl"])
        fig.add_scatter(x=[self.trials[i]["kl"] for i in front], y=[self.trials[i]["refusals"] for i in front],
                        mode="lines+markers", name="Pareto front", text=[f"trial {i}" for i in front])
        fig.add_scatter(x=[0.0], y=[self.baseline["refusals_proxy"]], mode="markers", name="no edit",
                        marker=dict(symbol="square", size=10))
        if self.reference and "proxy_refusals" in self.reference:
            fig.add_scatter(x=[self.reference["proxy_kl"]], y=[self.reference["proxy_refusals"]], mode="markers",
                            name=self.reference["name"], marker=dict(symbol="x", size=12))
        figs["pareto"] = fig
        if self.validation:
            n = self.validation[0]["n_harmful"]
            fig = go.Figure(layout=dict(title=f"validation prompts, Pareto front (where the point is chosen): refusal "
                                              f"rate (substring judge, {self.config.max_new_tokens} new tokens, {n} "
                                              "harmful) vs first-token KL (harmless)",
                                        xaxis=dict(title="KL(plain || edited)"), yaxis=dict(title="refusal rate")))
            fin = sorted(self.validation, key=lambda f: f["kl"])
            fig.add_scatter(x=[f["kl"] for f in fin], y=[f["refusal_rate"] for f in fin], mode="lines+markers",
                            name="Pareto points", text=[f"trial {f['trial']}" for f in fin])
            c = self.chosen["validation"]
            fig.add_scatter(x=[c["kl"]], y=[c["refusal_rate"]], mode="markers", name="chosen",
                            marker=dict(symbol="star", size=14))
            base = self.baseline.get("validation")
            if base is not None:
                fig.add_scatter(x=[0.0], y=[base["refusal_rate"]], mode="markers", name="no edit",
                                marker=dict(symbol="square", size=10))
            ref = (self.reference or {}).get("validation")
            if ref is not None:
                fig.add_scatter(x=[ref["kl"]], y=[ref["refusal_rate"]], mode="markers",
                                name=self.reference["name"], marker=dict(symbol="x", size=12))  # type: ignore[index]
            figs["validation"] = fig
        given = (self.reference or {}).get("given")
        if self.test is not None or given is not None:
            n = self.test["n_harmful"] if self.test is not None else None
            fig = go.Figure(layout=dict(title="test prompts (judged after the choice; only these points): refusal "
                                              f"rate (substring judge, {self.config.max_new_tokens} new tokens"
                                              + (f", {n} harmful" if n is not None else "") + ") vs first-token KL",
                                        xaxis=dict(title="KL(plain || edited)"), yaxis=dict(title="refusal rate")))
            if self.test is not None:
                t = self.test
                fig.add_scatter(x=[t["chosen"]["kl"]], y=[t["chosen"]["refusal_rate"]], mode="markers",
                                name=f"chosen (trial {self.chosen['trial']})", marker=dict(symbol="star", size=14))
                fig.add_scatter(x=[0.0], y=[t["baseline"]["refusal_rate"]], mode="markers", name="no edit",
                                marker=dict(symbol="square", size=10))
                if t.get("reference") is not None:
                    fig.add_scatter(x=[t["reference"]["kl"]], y=[t["reference"]["refusal_rate"]], mode="markers",
                                    name=self.reference["name"], marker=dict(symbol="x", size=12))  # type: ignore[index]
            if given is not None:
                fig.add_scatter(x=[given["kl"]], y=[given["refusal_rate"]], mode="markers",
                                name=f"{self.reference['name']} (given)", marker=dict(symbol="x", size=12))  # type: ignore[index]
            figs["test"] = fig
        if "validation" in figs:  # the analysis's figure first (`figure()` with no name): the front on validation
            figs = {"validation": figs.pop("validation"), **figs}
        w = self.chosen_weights()
        fig = go.Figure(layout=dict(title=f"per-layer ablation weights of the chosen point (trial {self.chosen['trial']})",
                                    xaxis=dict(title="layer"), yaxis=dict(title="weight")))
        for comp, vals in w.items():
            fig.add_scatter(x=list(range(self.n_layers)), y=vals, mode="lines+markers", name=COMPONENTS[comp])
        figs["weights"] = fig
        return figs

    def save_artifacts(self, directory: Path) -> None:
        write_json(directory / "pareto.json", {"pareto": [self.trials[i] for i in self.pareto],
                                               "validation": self.validation, "test": self.test,
                                               "chosen": self.chosen, "reference": self.reference,
                                               "baseline": self.baseline, "splits": self.splits, "trials": self.trials,
                                               "config": asdict(self.config), "system": system_record(self.config.system),
                                               "departures": self.departures})
        w = self.chosen_weights()
        write_tensors(directory / "directions.safetensors",
                      {"per_layer": self.directions, "chosen": self.chosen_directions(),
                       "weights_attn": torch.tensor(w["attn"]), "weights_mlp": torch.tensor(w["mlp"])},
                      {"site": "hook_resid_post", "positions": "last"})
        write_json(directory / "chosen.json", {"trial": self.chosen["trial"], "point": self.chosen_point.to_dict(),
                                               "weights": w, "tensors": "directions.safetensors"})


def _departures(cfg: AbliterationConfig) -> dict:
    out = {"last_layer_direction": "hook_resid_post before the final norm (heretic: after it)"}
    if cfg.trial_refusals == "first_token":
        out["trial_refusals"] = "greedy first token is a refusal token (one forward) instead of generation + substrings"
    out["choose"] = (f"fewest validation refusals (generation + substring judge) with KL <= {cfg.kl_budget}, chosen "
                     "by rule on the validation judgements only (heretic: the user picks from the front)")
    if cfg.system_value is None:
        out["system"] = "the chat template's default system prompt (heretic: 'You are a helpful assistant.')"
    return out


def _suggest(trial, n_layers: int) -> Point:
    """heretic v1.0's search space (see the module docstring)."""
    last = n_layers - 1
    scope = trial.suggest_categorical("direction_scope", ["global", "per layer"])
    index = trial.suggest_float("direction_index", 0.4 * last, 0.9 * last)
    kernels = {}
    for c, name in COMPONENTS.items():
        mx = trial.suggest_float(f"{name}.max_weight", 0.8, 1.5)
        pos = trial.suggest_float(f"{name}.max_weight_position", 0.6 * last, 1.0 * last)
        mn = trial.suggest_float(f"{name}.min_weight", 0.0, 1.0)  # a fraction of max_weight (multivariate TPE)
        dist = trial.suggest_float(f"{name}.min_weight_distance", 1.0, max(0.6 * last, 1.0))
        kernels[c] = Kernel(mx, pos, mn * mx, dist)
    return Point(None if scope == "per layer" else index, kernels)


class _Evaluator:
    """Scores an intervention on the validation prompts: refusals (proxy) and first-token KL, in one forward."""

    def __init__(self, model: "Model", harmful: list[str], harmless: list[str], refusal: RefusalScore,
                 cfg: AbliterationConfig):
        self.model, self.harmful, self.harmless, self.refusal, self.cfg = model, harmful, harmless, refusal, cfg
        self.clean = model.logits(harmful + harmless, system=cfg.system_value, batch_size=cfg.batch_size)
        self.kl = kl_rows(self.clean[len(harmful):])

    def __call__(self, iv: Intervention | None) -> tuple[int, float]:
        m, cfg, nh = self.model, self.cfg, len(self.harmful)
        ivs = [iv] if iv is not None else []
        with m.intervene(*ivs):
            logits = m.logits(self.harmful + self.harmless, system=cfg.system_value, batch_size=cfg.batch_size)
        kl = self.kl(logits[nh:], torch.arange(len(self.harmless))).mean().item()
        if cfg.trial_refusals == "first_token":
            refusals = int(self.refusal.greedy_refuses(logits[:nh]).sum())
        else:
            answers = m.generate(self.harmful, max_new_tokens=cfg.trial_max_new_tokens, system=cfg.system_value,
                                 interventions=ivs, batch_size=cfg.batch_size, progress=False)
            refusals = sum(self.refusal.judge.refused(answers))
        return refusals, kl


def judge_point(model: "Model", iv: Intervention | None, harmful: list[str], reference: Reference,
                cfg: AbliterationConfig, split: str) -> dict:
    """Greedy answers to the harmful prompts of one split judged by the substring judge, and the capability cost on
    the harmless prompts of `reference` (`interp.directions.scoring.capability_cost`: first-token KL, as heretic, and
    the cross-entropy of the plain model's own completions). `split` ("validation" or "test") is recorded."""
    ivs = [iv] if iv is not None else []
    answers = model.generate(harmful, max_new_tokens=cfg.max_new_tokens, system=cfg.system_value, interventions=ivs,
                             batch_size=cfg.batch_size, progress=False)
    refused = SubstringJudge().refused(answers)
    cost = capability_cost(model, reference, interventions=ivs, batch_size=min(cfg.batch_size, 16))
    return {"split": split, "refusal_rate": sum(refused) / len(refused), "refusals": sum(refused),
            "n_harmful": len(harmful), "kl": cost["kl"], "ce": cost["ce"], "ce_clean": cost["ce_clean"],
            "answers": answers}


def _check_set(name: str, s) -> list[str]:
    if s is None or isinstance(s, str) or len(s) == 0:
        raise InterpError(f"the {name} prompt set is empty or not a list; give a list of prompts")
    return list(s)


def _check_held_out(name: str, test: list[str], **others: list[str]) -> None:
    """Test prompts must be disjoint from the prompts the directions, trials and choice were made on."""
    key = lambda p: " ".join(p.lower().split())
    test_keys = {key(p) for p in test}
    for other, prompts in others.items():
        shared = [p for p in prompts if key(p) in test_keys]
        if shared:
            raise InterpError(f"{len(shared)} {name} prompt(s) are also {other} prompts (e.g. {shared[0][:60]!r}); "
                              "the test prompts must be held out from the training and validation prompts")


@dataclass
class AbliterationData:
    """The inputs of `run`. `harmful`/`harmless`: prompts for the per-layer directions. `*_val`: the validation
    prompts: the trials are scored on them and the Pareto points judged on them (generation + substring judge,
    and KL), and the point is chosen there. `*_test`: held-out prompts, disjoint from the others, on which only
    the chosen point, the reference and the unedited model are judged, after the choice; without them the
    Result has no test figures and says so. `refusal`: the refusal tokens (default: estimated on the validation
    prompts). `reference`: an intervention judged the same way on both splits (e.g. `Ablate(arditi_direction)`),
    or a (test refusal rate, KL) pair measured elsewhere, drawn beside the test points; named `reference_name`."""

    harmful: Sequence[str]
    harmless: Sequence[str]
    harmful_val: Sequence[str]
    harmless_val: Sequence[str]
    harmful_test: Sequence[str] | None = None
    harmless_test: Sequence[str] | None = None
    refusal: RefusalScore | None = None
    reference: Intervention | tuple[float, float] | None = None
    reference_name: str = "reference"


def _sampler(cfg: AbliterationConfig, index: int):
    """The TPE sampler that asks trial `index`, seeded from (`cfg.seed`, index): a sampler's random state is not
    part of the study's record, so each trial gets its own, and trial `index` samples the same point from the
    same finished trials whether the study ran uninterrupted or was resumed."""
    import optuna

    return optuna.samplers.TPESampler(n_startup_trials=cfg.n_startup_trials, n_ei_candidates=128, multivariate=True,
                                      seed=(cfg.seed * 1_000_003 + index) % 2 ** 32)


def _search(model: "Model", directions: Tensor, evaluate, cfg: AbliterationConfig, progress: Progress) -> list[dict]:
    """The Optuna study: `cfg.n_trials` trials, each scored by `evaluate`; with a checkpoint the study lives in
    SQLite storage there and a rerun continues it (a trial left running by a kill is marked failed and asked
    again). Returns every trial's record ({"trial": its index among the finished trials, "refusals", "kl",
    "params", "point"}), in order."""
    import optuna
    from optuna.trial import TrialState

    path = progress.file("study.db")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per trial; restored below, also on error
    try:
        study = optuna.create_study(storage=None if path is None else f"sqlite:///{path.resolve()}",
                                    study_name="abliteration", load_if_exists=True,
                                    directions=["minimize", "minimize"], sampler=_sampler(cfg, 0))
        for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            study.tell(stale.number, state=TrialState.FAIL)  # cut short by a kill: asked again below
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        trials: list[dict] = [t.user_attrs["record"] for t in sorted(done, key=lambda t: t.number)]
        for index in tqdm(range(len(trials), cfg.n_trials), desc="abliteration trials", unit="trial",
                          initial=len(trials), total=cfg.n_trials):
            study.sampler = _sampler(cfg, index)
            trial = study.ask()
            point = _suggest(trial, model.n_layers)
            refusals, kl = evaluate(point.intervention(directions))
            record = json.loads(json.dumps({"trial": index, "refusals": refusals, "kl": kl,
                                            "params": dict(trial.params), "point": point.to_dict()}))
            trial.set_user_attr("record", record)  # the study's own record of the trial: read back on a resume
            study.tell(trial, [refusals, kl])
            trials.append(record)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return trials


def _front_points(trials: list[dict], pareto: list[int], k: int | None) -> list[int]:
    """The Pareto points to judge by generation: all, or `k` spread evenly along the front by KL (both ends
    included), so a budget of a few points still spans the trade-off."""
    order = sorted(pareto, key=lambda i: (trials[i]["kl"], trials[i]["refusals"]))
    if k is not None and k < len(order):
        picks = sorted({round(j * (len(order) - 1) / max(k - 1, 1)) for j in range(k)})
        order = [order[j] for j in picks]
    return order


def run(model: "Model", data: AbliterationData, config: AbliterationConfig | None = None,
        checkpoint: str | os.PathLike | Checkpoint | None = None) -> AbliterationSearchResult:
    """heretic's abliteration search on the toolkit's batched scoring; see the module docstring and
    `AbliterationData` for the inputs.

    `checkpoint`: a folder where the run records its progress as it goes (`interp.core.progress`): the Optuna
    study in SQLite storage (`progress.study.db`; every finished trial with its record) and each judgement on
    the validation and test prompts. A rerun with the same folder and settings resumes there (a trial cut short
    is marked failed and asked again) and returns the Result an uninterrupted run returns; other settings are
    refused."""
    cfg = config or AbliterationConfig()
    reference, reference_name = data.reference, data.reference_name
    harmful, harmless = _check_set("harmful", data.harmful), _check_set("harmless", data.harmless)
    harmful_val = _check_set("harmful_val", data.harmful_val)
    harmless_val = _check_set("harmless_val", data.harmless_val)
    has_test = bool(data.harmful_test) and bool(data.harmless_test)
    if bool(data.harmful_test) != bool(data.harmless_test):
        raise InterpError("give both harmful_test and harmless_test, or neither")
    harmful_test = list(data.harmful_test or [])
    harmless_test = list(data.harmless_test or [])
    if has_test:
        _check_held_out("harmful_test", harmful_test, harmful_val=harmful_val, harmful=harmful)
        _check_held_out("harmless_test", harmless_test, harmless_val=harmless_val, harmless=harmless)
    if cfg.trial_refusals not in ("first_token", "generate"):
        raise InterpError(f"trial_refusals must be 'first_token' or 'generate', got {cfg.trial_refusals!r}")
    if cfg.n_trials < 1:
        raise InterpError(f"n_trials must be at least 1, got {cfg.n_trials}")
    refusal = data.refusal
    progress = Progress.open(checkpoint, "abliteration", {"config": asdict(cfg), "model": model_settings(model),
                                                          "data": digest(data)})
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    directions = per_layer_directions(model, harmful, harmless, cfg.system_value, min(cfg.batch_size, 16))
    timings["directions"] = time.perf_counter() - t0
    t = time.perf_counter()
    if refusal is None:
        refusal = RefusalScore.fit(model, harmful_val, harmless_val, max_new_tokens=cfg.refusal_new_tokens,
                                   batch_size=cfg.batch_size, system=cfg.system_value)
    evaluate = _Evaluator(model, harmful_val, harmless_val, refusal, cfg)
    base_refusals, _ = evaluate(None)
    baseline: dict = {"refusals_proxy": base_refusals, "n_harmful_val": len(harmful_val),
                      "n_harmless_val": len(harmless_val), "refusal_tokens": refusal.refusal_tokens_}
    timings["baseline"] = time.perf_counter() - t

    t = time.perf_counter()
    trials = _search(model, directions, evaluate, cfg, progress)
    timings["trials"] = time.perf_counter() - t
    pareto = pareto_front([(r["refusals"], r["kl"]) for r in trials])

    def intervention(i: int) -> Intervention:
        p = trials[i]["point"]
        return Point(p["direction_index"], {c: Kernel(**k) for c, k in p["kernels"].items()}).intervention(directions)

    # validation: the Pareto points judged by generation on the validation prompts; the choice is made here
    # (each judgement is one recorded unit; the plain model's completions are made only when one is computed)
    t = time.perf_counter()
    clean_val = functools.cache(lambda: reference_completions(model, harmless_val, batch_size=min(cfg.batch_size, 16),
                                                              system=cfg.system_value))
    baseline["validation"] = _brief(progress.unit("validation/no edit", lambda: judge_point(
        model, None, harmful_val, clean_val(), cfg, "validation")))
    validation = [progress.unit(f"validation/trial {i}", lambda: {"trial": i, **judge_point(
        model, intervention(i), harmful_val, clean_val(), cfg, "validation")})
                  for i in tqdm(_front_points(trials, pareto, cfg.final_points), desc="judge Pareto points (validation)",
                                unit="point")]
    ref: dict | None = None
    if isinstance(reference, tuple):
        ref = {"name": reference_name, "given": {"refusal_rate": float(reference[0]), "kl": float(reference[1])}}
    elif reference is not None:
        def judge_reference() -> dict:
            assert reference is not None and not isinstance(reference, tuple)
            ref_refusals, ref_kl = evaluate(reference)
            return {"proxy_refusals": ref_refusals, "proxy_kl": ref_kl,
                    "validation": judge_point(model, reference, harmful_val, clean_val(), cfg, "validation")}

        ref = {"name": reference_name, **progress.unit("validation/reference", judge_reference)}
    timings["validation"] = time.perf_counter() - t
    chosen = choose([_brief(f) for f in validation], cfg.kl_budget)  # type: ignore[misc]
    chosen["chosen_on"] = "validation"

    # test: only the chosen point, the reference and the unedited model, after the choice
    t = time.perf_counter()
    test: dict | None = None
    if has_test:
        clean_test = functools.cache(lambda: reference_completions(model, harmless_test, system=cfg.system_value,
                                                                   batch_size=min(cfg.batch_size, 16)))
        test = {"n_harmful": len(harmful_test), "n_harmless": len(harmless_test),
                "baseline": progress.unit("test/no edit", lambda: judge_point(model, None, harmful_test, clean_test(),
                                                                               cfg, "test")),
                "chosen": progress.unit("test/chosen", lambda: {"trial": chosen["trial"], **judge_point(
                    model, intervention(chosen["trial"]), harmful_test, clean_test(), cfg, "test")}),
                "reference": None}
        if ref is not None and "validation" in ref:
            test["reference"] = progress.unit("test/reference", lambda: judge_point(
                model, reference, harmful_test, clean_test(), cfg, "test"))  # type: ignore[arg-type]
            ref["test"] = _brief(test["reference"])
        baseline["test"] = _brief(test["baseline"])
        chosen["test"] = {k: test["chosen"][k] for k in ("split", "refusal_rate", "refusals", "n_harmful", "kl", "ce",
                                                         "ce_clean")}
    else:
        baseline["test"] = None
        chosen["test"] = None
    timings["test"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return AbliterationSearchResult(trials, pareto, validation, chosen, ref, baseline, test, directions,
                                    model.n_layers, cfg, _departures(cfg), timings)


def choose(validation: list[dict], kl_budget: float) -> dict:
    """Fewest validation refusals with KL <= kl_budget (ties: lower KL); when none is under budget, the lowest KL.
    `validation`: the Pareto points judged on the validation prompts ({"trial", "refusal_rate", "kl", ...}); the
    test prompts are judged only after this choice, so nothing measured on them can reach it."""
    if not validation:
        raise InterpError("no Pareto point was judged; raise final_points")
    if any(f.get("split", "validation") != "validation" for f in validation):
        raise InterpError("choose takes validation judgements only; the test prompts must not decide the point")
    ok = [f for f in validation if f["kl"] <= kl_budget]
    if ok:
        best = min(ok, key=lambda f: (f["refusal_rate"], f["kl"]))
        rule = f"fewest validation refusals with KL <= {kl_budget}"
    else:
        best = min(validation, key=lambda f: f["kl"])
        rule = f"no Pareto point has validation KL <= {kl_budget}; took the lowest KL"
    keys = ("refusal_rate", "refusals", "n_harmful", "kl", "ce", "ce_clean")
    return {"trial": best["trial"], "rule": rule,
            "validation": {"split": "validation", **{k: best[k] for k in keys if k in best}}}


def export_checkpoint(model: "Model", result: AbliterationSearchResult, out_dir) -> Path:
    """The chosen point as an orthogonalised HF checkpoint (per-layer weights baked in; embedding untouched)."""
    from interp.steering.orthogonalize import check_export_dir, orthogonalized_copy, write_checkpoint

    check_export_dir(out_dir)
    weights: dict[str, Sequence[float]] = dict(result.chosen_weights())
    hf = orthogonalized_copy(model, result.chosen_directions(), weights, embed=False)
    return write_checkpoint(hf, model.tokenizer, out_dir, "interp_abliteration.json",
                            {"source_model": model.fingerprint, "chosen": result.chosen,
                             "point": result.chosen_point.to_dict(), "weights": result.chosen_weights(),
                             "method": "heretic-style abliteration search (analyses.abliteration)"})
