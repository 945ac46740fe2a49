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
   `TPESampler(multivariate=True, n_startup_trials=60, n_ei_candidates=128)`; heretic runs 200 trials.
4. The Pareto front of the trials; heretic lets the user pick a point from it.

Departures, each a named option recorded in the Result (`config` and `departures`):
- `trial_refusals="first_token"` (default): a trial's refusal count is the number of harmful validation prompts
  whose greedy first token is a refusal token (`RefusalScore.greedy_refuses`; the score > 0 rule misses
  the greedy refusals made at p < 0.5: benchmarks/results/refusal_qwen05.json, `filter_counts`), read off the same
  single batched forward that gives the KL, instead of heretic's greedy generation (100 tokens) judged by refusal
  substrings (`trial_refusals="generate"` does that, at `trial_max_new_tokens`). The final Pareto points are then judged
  by generation and the substring judge on held-out prompts, so the cheap proxy never decides the report alone.
- `choose`: heretic asks the user; here the chosen point is, among the Pareto points judged on held-out prompts,
  the fewest refusals with KL <= `kl_budget` (ties: lower KL; none under budget: the lowest KL, said so).
- The per-layer direction of the last layer is its `hook_resid_post` before the final norm (heretic reads HF's
  last hidden state, which is after the norm); this only touches the last layer's per-layer direction.
- `system`: the library's `DEFAULT_SYSTEM` (None, the chat template's own system prompt) unless set (heretic sends
  "You are a helpful assistant."); recorded in the Result (`system`).
- Later heretic versions add a KL target, an MLP weight lower bound of -0.25 and row normalisation; not here.
"""

from __future__ import annotations

import math
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
from interp.core.result import Result
from interp.directions.estimators import DiffInMeans
from interp.directions.scoring import Reference, capability_cost, kl_rows, reference_completions
from interp.errors import InterpError
from interp.io import write_json, write_tensors
from interp.judges import RefusalScore, SubstringJudge

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
    max_new_tokens: int = 256  # greedy tokens of the final, judged answers on held-out prompts
    final_points: int | None = None  # judge at most this many Pareto points (spread evenly along the front by KL); None: all
    kl_budget: float = 0.1  # the chosen point: fewest held-out refusals with KL <= this (Arditi et al.'s KL filter)
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


@dataclass
class AbliterationSearchResult(Result):
    trials: list[dict]  # every trial: params, point, proxy refusals, kl
    pareto: list[int]  # trial numbers on the proxy Pareto front
    final: list[dict]  # held-out judgement of the (best) Pareto points
    chosen: dict
    reference: dict | None
    baseline: dict
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

    def summary(self) -> dict:
        return {"chosen": self.chosen, "chosen_weights": self.chosen_weights(), "baseline": self.baseline,
                "reference": self.reference, "final": self.final,
                "pareto": [self.trials[i] for i in self.pareto], "n_trials": len(self.trials),
                "config": asdict(self.config), "system": system_record(self.config.system),
                "departures": self.departures, "timings_s": self.timings}

    def figures(self) -> dict[str, go.Figure]:
        figs = {}
        n_h = self.baseline["n_harmful_val"]
        fig = go.Figure(layout=dict(title=f"trials: refusals ({self.config.trial_refusals} proxy, {n_h} harmful "
                                          "validation prompts) vs first-token KL (harmless)",
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
        if self.final:
            n = self.final[0]["n_harmful"]
            fig = go.Figure(layout=dict(title=f"held-out: refusal rate (substring judge, {self.config.max_new_tokens} "
                                              f"new tokens, {n} harmful prompts) vs first-token KL (harmless)",
                                        xaxis=dict(title="KL(plain || edited)"), yaxis=dict(title="refusal rate")))
            fin = sorted(self.final, key=lambda f: f["kl"])
            fig.add_scatter(x=[f["kl"] for f in fin], y=[f["refusal_rate"] for f in fin], mode="lines+markers",
                            name="Pareto points", text=[f"trial {f['trial']}" for f in fin])
            c = next(f for f in self.final if f["trial"] == self.chosen["trial"])
            fig.add_scatter(x=[c["kl"]], y=[c["refusal_rate"]], mode="markers", name="chosen",
                            marker=dict(symbol="star", size=14))
            if "heldout_refusal_rate" in self.baseline:
                fig.add_scatter(x=[0.0], y=[self.baseline["heldout_refusal_rate"]], mode="markers", name="no edit",
                                marker=dict(symbol="square", size=10))
            if self.reference and "refusal_rate" in self.reference:
                fig.add_scatter(x=[self.reference["kl"]], y=[self.reference["refusal_rate"]], mode="markers",
                                name=self.reference["name"], marker=dict(symbol="x", size=12))
            figs["heldout"] = fig
        w = self.chosen_weights()
        fig = go.Figure(layout=dict(title=f"per-layer ablation weights of the chosen point (trial {self.chosen['trial']})",
                                    xaxis=dict(title="layer"), yaxis=dict(title="weight")))
        for comp, vals in w.items():
            fig.add_scatter(x=list(range(self.n_layers)), y=vals, mode="lines+markers", name=COMPONENTS[comp])
        figs["weights"] = fig
        return figs

    def save_artifacts(self, directory: Path) -> None:
        write_json(directory / "pareto.json", {"pareto": [self.trials[i] for i in self.pareto], "final": self.final,
                                               "chosen": self.chosen, "reference": self.reference,
                                               "baseline": self.baseline, "trials": self.trials,
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
    out["choose"] = f"fewest held-out refusals with KL <= {cfg.kl_budget} (heretic: the user picks)"
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


def judge_heldout(model: "Model", iv: Intervention | None, harmful: list[str], reference: Reference,
                  cfg: AbliterationConfig) -> dict:
    """Greedy answers to held-out harmful prompts judged by the substring judge, and the capability cost on the
    harmless prompts of `reference` (`interp.directions.scoring.capability_cost`: first-token KL, as heretic, and the
    cross-entropy of the plain model's own completions)."""
    ivs = [iv] if iv is not None else []
    answers = model.generate(harmful, max_new_tokens=cfg.max_new_tokens, system=cfg.system_value, interventions=ivs,
                             batch_size=cfg.batch_size, progress=False)
    refused = SubstringJudge().refused(answers)
    cost = capability_cost(model, reference, interventions=ivs, batch_size=min(cfg.batch_size, 16))
    return {"refusal_rate": sum(refused) / len(refused), "refusals": sum(refused), "n_harmful": len(harmful),
            "kl": cost["kl"], "ce": cost["ce"], "ce_clean": cost["ce_clean"], "answers": answers}


def _check_set(name: str, s) -> list[str]:
    if s is None or isinstance(s, str) or len(s) == 0:
        raise InterpError(f"the {name} prompt set is empty or not a list; give a list of prompts")
    return list(s)


@dataclass
class AbliterationData:
    """The inputs of `run`. `harmful`/`harmless`: prompts for the per-layer directions. `*_val`: the trials'
    prompts. `*_test`: held-out prompts on which the Pareto points are finally judged (generation + substring
    judge, and KL); without them the Pareto points are judged on the validation prompts (and `final_on` says so).
    `refusal`: the refusal tokens (default: estimated on the validation prompts). `reference`: an intervention
    judged the same way (e.g. `Ablate(arditi_direction)`), or a (held-out refusal rate, KL) pair to draw beside
    the front, named `reference_name`."""

    harmful: Sequence[str]
    harmless: Sequence[str]
    harmful_val: Sequence[str]
    harmless_val: Sequence[str]
    harmful_test: Sequence[str] | None = None
    harmless_test: Sequence[str] | None = None
    refusal: RefusalScore | None = None
    reference: Intervention | tuple[float, float] | None = None
    reference_name: str = "reference"


def run(model: "Model", data: AbliterationData, config: AbliterationConfig | None = None) -> AbliterationSearchResult:
    """heretic's abliteration search on the toolkit's batched scoring; see the module docstring and
    `AbliterationData` for the inputs."""
    import optuna

    cfg = config or AbliterationConfig()
    harmful, harmless, harmful_val, harmless_val = data.harmful, data.harmless, data.harmful_val, data.harmless_val
    harmful_test, harmless_test, refusal = data.harmful_test, data.harmless_test, data.refusal
    reference, reference_name = data.reference, data.reference_name
    harmful, harmless = _check_set("harmful", harmful), _check_set("harmless", harmless)
    harmful_val, harmless_val = _check_set("harmful_val", harmful_val), _check_set("harmless_val", harmless_val)
    if cfg.trial_refusals not in ("first_token", "generate"):
        raise InterpError(f"trial_refusals must be 'first_token' or 'generate', got {cfg.trial_refusals!r}")
    if cfg.n_trials < 1:
        raise InterpError(f"n_trials must be at least 1, got {cfg.n_trials}")
    final_on = "test" if harmful_test and harmless_test else "validation"
    if harmful_test and harmless_test:  # final_on == "test"
        harmful_test, harmless_test = list(harmful_test), list(harmless_test)
    else:
        harmful_test, harmless_test = harmful_val, harmless_val
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
    baseline = {"refusals_proxy": base_refusals, "n_harmful_val": len(harmful_val),
                "n_harmless_val": len(harmless_val), "refusal_tokens": refusal.refusal_tokens_}
    timings["baseline"] = time.perf_counter() - t

    t = time.perf_counter()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per trial; restored below, also on error
    try:
        sampler = optuna.samplers.TPESampler(n_startup_trials=cfg.n_startup_trials, n_ei_candidates=128,
                                             multivariate=True, seed=cfg.seed)
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
        trials: list[dict] = []
        for _ in tqdm(range(cfg.n_trials), desc="abliteration trials", unit="trial"):
            trial = study.ask()
            point = _suggest(trial, model.n_layers)
            refusals, kl = evaluate(point.intervention(directions))
            study.tell(trial, [refusals, kl])
            trials.append({"trial": trial.number, "refusals": refusals, "kl": kl, "params": dict(trial.params),
                           "point": point.to_dict()})
    finally:
        optuna.logging.set_verbosity(verbosity)
    timings["trials"] = time.perf_counter() - t
    pareto = pareto_front([(r["refusals"], r["kl"]) for r in trials])

    # final: held-out generation + judge for the Pareto points; with `final_points`, that many spread evenly along
    # the front by KL (its two ends included), so a budget of a few points still spans the trade-off
    t = time.perf_counter()
    order = sorted(pareto, key=lambda i: (trials[i]["kl"], trials[i]["refusals"]))
    if cfg.final_points is not None and cfg.final_points < len(order):
        k = cfg.final_points
        picks = sorted({round(j * (len(order) - 1) / max(k - 1, 1)) for j in range(k)})
        order = [order[j] for j in picks]
    clean_test = reference_completions(model, harmless_test, batch_size=min(cfg.batch_size, 16), system=cfg.system_value)
    base_final = judge_heldout(model, None, harmful_test, clean_test, cfg)
    baseline["heldout_refusal_rate"] = base_final["refusal_rate"]
    final = []
    for i in tqdm(order, desc="judge Pareto points", unit="point"):
        p = trials[i]["point"]
        point = Point(p["direction_index"], {c: Kernel(**k) for c, k in p["kernels"].items()})
        final.append({"trial": i, **judge_heldout(model, point.intervention(directions), harmful_test, clean_test, cfg)})
    ref = None
    if isinstance(reference, tuple):
        ref = {"name": reference_name, "refusal_rate": float(reference[0]), "kl": float(reference[1])}
    elif reference is not None:
        ref_refusals, ref_kl = evaluate(reference)
        ref = {"name": reference_name, "proxy_refusals": ref_refusals, "proxy_kl": ref_kl,
               **judge_heldout(model, reference, harmful_test, clean_test, cfg)}
    timings["final"] = time.perf_counter() - t
    chosen = choose(final, cfg.kl_budget)
    chosen["final_on"] = final_on
    timings["total"] = time.perf_counter() - t0
    return AbliterationSearchResult(trials, pareto, final, chosen, ref, baseline, directions, model.n_layers, cfg,
                                    _departures(cfg), timings)


def choose(final: list[dict], kl_budget: float) -> dict:
    """Fewest held-out refusals with KL <= kl_budget (ties: lower KL); when none is under budget, the lowest KL."""
    if not final:
        raise InterpError("no Pareto point was judged; raise final_points")
    ok = [f for f in final if f["kl"] <= kl_budget]
    if ok:
        best = min(ok, key=lambda f: (f["refusal_rate"], f["kl"]))
        rule = f"fewest held-out refusals with KL <= {kl_budget}"
    else:
        best = min(final, key=lambda f: f["kl"])
        rule = f"no Pareto point has KL <= {kl_budget}; took the lowest KL"
    return {"trial": best["trial"], "refusal_rate": best["refusal_rate"], "kl": best["kl"], "rule": rule}


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
