"""Subspace rerouting: where do jailbreaks move a prompt's activations?

Winninger, Addad and Kapusta (2025), "Using Mechanistic Interpretability to Craft Adversarial Attacks against
Large Language Models", start from an interpretability observation: at the middle layers, the last-token
residual stream of harmful and harmless instructions forms two linearly separable clusters, and a jailbreak
works when it moves a harmful prompt's activations out of the "refusal" cluster into the "acceptance" one.
Their attack, subspace rerouting (SSR), optimises a few adversarial tokens (GCG-style greedy coordinate
search) for exactly that move, measured by linear probes, a refusal direction, or where safety heads look.
Because the loss is read at a middle layer, every forward stops there, which is why SSR needs far less time
per success than GCG, whose loss (the likelihood of "Sure, here is ...") needs the whole model.

`attack` runs the attack (`interp attack ... --out RUN.jsonl` calls it): it chooses the targets, loads the
probes or refusal directions that probe- and steering-SSR need, or fits them on bundled harmful and harmless
prompts and saves them beside the log, then hands them to the core engine (`interp.attacks`), which takes
them as values. The targets, as the paper and its code (github.com/Sckathach/subspace-rerouting) have them:

- Layers: SSR reaches late layers. The paper's runs target 2 to 5 layers from about a third to ~0.9 of the
  depth (Llama 3.2 1B: 5, 8, 11, 14 of 16; Qwen 2.5 1.5B: 11, 14, 18, 23 of 28), hand-picked after looking at
  per-layer probe accuracies; one middle layer alone failed on every attempt. With no `layers`,
  `choose_layers` does that pick automatically: probes at every layer from one capture, held-out accuracy,
  and `n_layers_auto` (4) layers spread over `layer_window` (0.35-0.9 of the depth), each the most accurate
  of its part of the window. The accuracies and the choice are saved in `RUN.targets.json` and reported by
  `rerouting`. Departure: the choice is automatic where the reference's is by hand.
- Steering-SSR: the paper's formula and the reference code measure projections from the origin (the code:
  the cosine of e with r, pushed to a fixed -1 per layer; the paper: <e, r> to (1 + a) <e*, r>, a < 0).
  Measured from the origin, a prompt whose projection is negative gets a target on the refusal side. The
  default here measures from the harmless mean of the bundled training prompts (`centre="harmless"`;
  "midpoint" and "origin", the paper's formula, are options) and moves the projection by a |p*| toward
  acceptance. `reverse=True` is the paper's reverse-lens (steer toward refusal; centred at the harmful mean).
  The reference code's fixed-cosine loss is not offered.
- Attention-SSR: the paper's results table used the head-output-ablation loss (the reference's
  `FullAblation`: the norm of the chosen heads' `hook_z` at the last position), on 3-4 heads it found by
  DLA, patching and its hijack score. The default here is that loss (`attention_loss="ablation"`; "hijack" is
  the pattern loss, the reference's `Dazzle`) on `n_heads` (4) heads chosen by `choose_heads`: gradient x
  activation of each head's last-position output on the refusal projection at the deepest target layer,
  over harmful training prompts. Departure: attribution replaces the paper's hand analysis (its hijack score
  needs successful and failed jailbreaks, which a fresh run does not have); `head_choice="all"` averages
  every head of `layers`, as before. The heads and scores are in `RUN.targets.json` and the loss's
  description.

`rerouting` reads an attack run's log and reports:

- the attack success rate, best of N (a behaviour succeeds when any of its N judged attempts passes; N per
  behaviour, and the run's `attempts` setting, which fixes N for every method), beside the single-attempt rate
  (the best-loss suffix at the end of each search, judged once), and the seconds per (best-of-N) success (total
  seconds over successes; a lower bound when nothing succeeded);
- the loss curves (best loss after each search step, per behaviour);
- the targets: the chosen layers with every layer's held-out probe accuracy, and the heads with their scores;
- the rerouting picture: per targeted layer, the 2-D PCA of last-token `hook_resid_post` of bundled harmful
  and harmless prompts, with each behaviour's plain prompt and its adversarial prompt drawn on top (an arrow
  from one to the other), and, per layer, where the prompts sit on the harmful-harmless axis
  (0 = the harmless mean, 1 = the harmful mean, by projection on the difference of the means).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from interp.attacks.losses import RESID, AttackLoss, check_layers
from interp.attacks.run import AttackConfig, Summary, build_loss, check_run, default_layers, final_rows
from interp.attacks.run import attack as run_attack
from interp.core.model import DEFAULT_SYSTEM, System
from interp.core.result import Result
from interp.core.runner import forward
from interp.core.sites import Site
from interp.core.subspace import Direction, Subspace
from interp.directions.estimators import DiffInMeans, class_means, pca
from interp.errors import InterpError
from interp.io import read_json, read_tensors, write_json, write_tensors
from interp.judges.measured import measured_errors
from probes import LinearProbes

if TYPE_CHECKING:
    from interp.core.hooks import HookFn
    from interp.core.model import Model
    from interp.data.prompts import Behavior

GROUPS = ("harmful", "harmless", "original", "attacked")
COLORS = {"harmful": "#d62728", "harmless": "#2ca02c", "original": "#ff7f0e", "attacked": "#1f77b4"}


@dataclass
class ReroutingResult(Result):
    """Success, cost, loss curves and the PCA rerouting picture of one attack run."""

    name: str
    model: str
    rows: list[dict]  # final attempt of each finished behaviour
    success_rate: float
    seconds_per_success: float
    lower_bound: bool
    layers: list[int]
    points: dict[int, dict[str, Tensor]] = field(default_factory=dict)  # layer -> group -> [n, 2] PCA coordinates
    explained: dict[int, list[float]] = field(default_factory=dict)  # layer -> variance ratio of PC1, PC2
    axis: dict[int, dict[str, list[float]]] = field(default_factory=dict)  # layer -> group -> harmful-axis positions
    targets: dict | None = None  # why these layers / heads (RUN.targets.json): probe accuracies, head scores
    system: str | None = None  # the system prompt of the PCA picture's prompts (`system_record`); None: no picture
    best_of_n: dict | None = None  # `Summary.best_of_n`: success when any of N judged attempts passes, with N
    single_attempt: dict | None = None  # `Summary.single_attempt`: the best-loss suffix judged once

    title = "Subspace rerouting"

    def summary(self) -> dict:
        mean = {l: {g: sum(v) / len(v) for g, v in groups.items() if v} for l, groups in self.axis.items()}
        return {
            "method": self.name, "model": self.model, "finished": len(self.rows),
            "successes": sum(bool(r["success"]) for r in self.rows), "success_rate": self.success_rate,
            "success_is": "best of N", "best_of_n": self.best_of_n, "single_attempt": self.single_attempt,
            "seconds_per_success": self.seconds_per_success, "seconds_per_success_is_lower_bound": self.lower_bound,
            "layers": self.layers, "mean_harmful_axis_position": mean,
            "layer_choice": (self.targets or {}).get("layer_choice"), "head_choice": (self.targets or {}).get("head_choice"),
            "system": self.system, "judge_errors": measured_errors("substantive_success"),
            "behaviors": [{**{k: r.get(k) for k in ("id", "behavior", "adversarial_prompt", "success", "loss", "step",
                                                    "seconds")},
                           "single_success": Summary.single_success(r), "attempts": r.get("attempts")}
                          for r in self.rows],
        }

    def figures(self) -> dict[str, go.Figure]:
        figs = {"loss curves": self.loss_figure()}
        if self.points:
            figs = {"rerouting": self.rerouting_figure(), **figs}
        return figs

    def loss_figure(self) -> go.Figure:
        fig = go.Figure()
        for r in self.rows:
            curve = r.get("curve") or []
            fig.add_trace(go.Scatter(x=list(range(1, len(curve) + 1)), y=curve, mode="lines+markers",
                                     name=_short(r["behavior"]) + (" ✓" if r["success"] else " ✗"),
                                     line={"dash": "solid" if r["success"] else "dot"}))
        fig.update_layout(title=f"{self.name} on {self.model}: best loss per step", xaxis_title="step",
                          yaxis_title="loss", template="plotly_white")
        return fig

    def rerouting_figure(self) -> go.Figure:
        layers = sorted(self.points)
        fig = make_subplots(rows=1, cols=len(layers), subplot_titles=[
            f"layer {l} (PC1 {100 * self.explained[l][0]:.0f}%, PC2 {100 * self.explained[l][1]:.0f}%)" for l in layers])
        for col, l in enumerate(layers, start=1):
            pts = self.points[l]
            for g in GROUPS:
                p = pts[g]
                text = [_short(r["behavior"]) for r in self.rows] if g in ("original", "attacked") else None
                fig.add_trace(go.Scatter(
                    x=p[:, 0].tolist(), y=p[:, 1].tolist(), mode="markers", name=g, legendgroup=g, showlegend=col == 1,
                    marker={"color": COLORS[g], "size": 10 if g in ("original", "attacked") else 6,
                            "symbol": "star" if g == "attacked" else "circle", "opacity": 1 if g in ("original", "attacked") else 0.5},
                    text=text, hovertemplate="%{text}<extra>" + g + "</extra>" if text else None), row=1, col=col)
            for o, a in zip(pts["original"].tolist(), pts["attacked"].tolist()):
                fig.add_annotation(x=a[0], y=a[1], ax=o[0], ay=o[1], xref=f"x{col if col > 1 else ''}",
                                   yref=f"y{col if col > 1 else ''}", axref=f"x{col if col > 1 else ''}",
                                   ayref=f"y{col if col > 1 else ''}", showarrow=True, arrowhead=2, arrowcolor="#555")
        fig.update_layout(title=f"{self.name}: last-token activations, PCA of harmful vs harmless prompts",
                          template="plotly_white", height=420, width=max(500, 420 * len(layers)))
        return fig


def _short(text: str, n: int = 40) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n - 1] + "…"


# ----- what SSR needs: probes and refusal directions of the attacked model -----

def reference_activations(model: "Model", layers: Sequence[int], n: int = 32, seed: int = 0,
                          system: System = DEFAULT_SYSTEM) -> tuple[Float[Tensor, "n2 k d"], Tensor]:
    """Last-token hook_resid_post at `layers` for n bundled harmful and n harmless training prompts
    (Arditi et al.'s splits; harmless = Alpaca, CC BY-NC 4.0). Returns X [2n, k, d] and y (1 = harmful)."""
    from interp.data.prompts import dataset

    harmful, harmless = dataset("harmful_train", n=n, seed=seed), dataset("harmless_train", n=n, seed=seed)
    sites = [Site(l, RESID) for l in layers]
    acts = model.capture(harmful + harmless, sites, positions="last", system=system)
    X = torch.stack([acts.acts[s.name] for s in sites], 1)
    y = torch.tensor([1] * len(harmful) + [0] * len(harmless))
    return X, y


def _provenance(model: "Model", layers: Sequence[int], n: int, seed: int) -> dict:
    return {"model": model.fingerprint, "site": RESID, "position": "last", "layers": list(layers),
            "data": f"harmful_train/harmless_train n={n} seed={seed}"}


def fit_probes(model: "Model", layers: Sequence[int], n: int = 32, seed: int = 0, X: Tensor | None = None,
               y: Tensor | None = None) -> LinearProbes:
    """Logistic probes (class 1 = harmful) at `layers`, fitted on the bundled training prompts (or on X, y)."""
    if X is None:
        X, y = reference_activations(model, layers, n, seed)
    return LinearProbes("logistic", provenance=_provenance(model, layers, n, seed)).fit(X, y)


def fit_directions(model: "Model", layers: Sequence[int], n: int = 32, seed: int = 0, X: Tensor | None = None,
                   y: Tensor | None = None) -> list[Direction]:
    """Difference-in-means refusal directions (harmful minus harmless) at `layers` (Arditi et al. 2024)."""
    if X is None:
        X, y = reference_activations(model, layers, n, seed)
    fitted = DiffInMeans(provenance=_provenance(model, layers, n, seed)).fit(X, y)
    return [fitted.direction_at(k, layer=l) for k, l in enumerate(layers)]


def save_directions(directions: Sequence[Direction], directory: str | os.PathLike) -> Path:
    """One `layer_<i>` Direction folder per layer."""
    directory = Path(directory)
    for d in directions:
        d.save(directory / f"layer_{d.provenance['layer']}")
    return directory


def load_directions(directory: str | os.PathLike, model: "Model", layers: Sequence[int]) -> list[Direction]:
    """The Direction of each layer from `directory/layer_<i>`; refuses directions of another model."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InterpError(f"direction directory {directory} does not exist; expected one layer_<i> folder per layer")
    out = []
    for l in layers:
        sub = directory / f"layer_{l}"
        if not sub.is_dir():
            have = sorted(p.name for p in directory.glob("layer_*"))
            raise InterpError(f"{directory} has no direction for layer {l} (expected {sub}; found {have or 'none'})")
        d = Subspace.load(sub, model)
        if not isinstance(d, Direction):
            raise InterpError(f"{sub} holds a {d.k}-dimensional subspace, not a direction")
        out.append(d)
    return out


# ----- choosing the targets: layers by probe accuracy, heads by attribution -----

@dataclass
class LayerChoice:
    """The target layers and why: held-out accuracy of a logistic probe at every layer (None where the layers
    were given) and the depth window searched."""

    layers: list[int]
    method: str  # "probe accuracy", "given" or "given (heads)"
    accuracy: list[float] | None = None  # held-out accuracy per layer 0..L-1
    window: list[float] | None = None
    n_train: int = 0
    n_test: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class HeadChoice:
    """Attention-SSR's heads, ranked by attribution: the first-order drop of the refusal projection
    <resid_post[metric_layer] - mu_harmless, r> at the last position when a head's output there is zeroed,
    z . dm/dz, averaged over harmful prompts (positive: the head pushes toward refusal)."""

    heads: list[tuple[int, int]]
    scores: list[float]  # of `heads`, descending
    metric_layer: int
    method: str = "attribution"
    n_prompts: int = 0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "heads": [list(h) for h in self.heads]}


def choose_layers(model: "Model", k: int = 4, window: Sequence[float] = (0.35, 0.9), n: int = 32, seed: int = 0,
                  test_size: float = 0.25, X: Tensor | None = None, y: Tensor | None = None,
                  system: System = DEFAULT_SYSTEM) -> LayerChoice:
    """SSR's target layers from per-layer probe accuracy (the paper: 2 to 5 layers from about a third up to
    ~0.9 of the depth; one middle layer alone failed). One capture of every layer's last-token residual on n
    harmful and n harmless training prompts (or X [2n, L, d], y); logistic probes fitted on a stratified split
    and scored on the held-out part. The window [lo, hi] x n_layers is cut into k parts around k evenly spaced
    points (its first and last layer included), and each part gives its most accurate layer, the one nearest
    the point among those within one held-out prompt of the part's best (smaller differences are noise):
    k layers spread like the reference's hand-picked ones (e.g. 5, 8, 11, 14 of 16), each as separable as its
    neighbourhood allows, even when a small held-out split makes accuracies coarse."""
    from probes.linear import evaluate

    if X is None:
        X, y = reference_activations(model, range(model.n_layers), n, seed, system)
    if X.shape[1] != model.n_layers:
        raise InterpError(f"choose_layers needs activations at every layer ([n, {model.n_layers}, d]), got {tuple(X.shape)}")
    if not isinstance(k, int) or k < 1:
        raise InterpError(f"the number of target layers k must be a positive integer, got {k!r}")
    default_layers(model, 1, window)  # validates the window
    first = math.ceil(float(window[0]) * model.n_layers)
    last = min(math.floor(float(window[1]) * model.n_layers), model.n_layers - 1)
    report = evaluate(X, y, test_size=test_size, seed=seed, kinds=["logistic"])
    acc = [float(a) for a in report.test_accuracy["logistic"]]
    k = min(k, last - first + 1)
    goals = [last if k == 1 else first + (last - first) * i / (k - 1) for i in range(k)]
    parts: list[list[int]] = [[] for _ in goals]
    for l in range(first, last + 1):
        parts[min(range(k), key=lambda i: (abs(l - goals[i]), -i))].append(l)
    noise = 1 / max(report.n_test, 1) + 1e-6  # accuracies one held-out prompt apart count as ties
    chosen = []
    for part, g in zip(parts, goals):
        best = max(acc[l] for l in part)
        chosen.append(min((l for l in part if acc[l] >= best - noise), key=lambda l: (abs(l - g), -l)))
    return LayerChoice(sorted(chosen), "probe accuracy", acc, [float(w) for w in window], report.n_train, report.n_test)


def class_centres(X: Float[Tensor, "n k d"], y: Tensor) -> dict[str, Tensor]:
    """The harmless and harmful means and their midpoint at each layer ([k, d] each): where steering-SSR
    measures projections from."""
    mu0, mu1 = class_means(X, y == 1)
    return {"harmless": mu0.float(), "harmful": mu1.float(), "midpoint": ((mu0 + mu1) / 2).float()}


def steering_centre(config: AttackConfig) -> str:
    """Which point config's steering-SSR measures from: the harmless mean, or the harmful one for the
    reverse-lens (steering toward refusal mirrors the roles), the midpoint, or the origin."""
    return "harmful" if config.reverse and config.centre == "harmless" else config.centre


def choose_heads(model: "Model", k: int = 4, metric_layer: int | None = None, n: int = 16, seed: int = 0,
                 batch_size: int = 8, X: Tensor | None = None, y: Tensor | None = None,
                 system: System = DEFAULT_SYSTEM) -> HeadChoice:
    """The k heads whose last-position output most pushes harmful prompts along the refusal direction at
    `metric_layer` (default: the deepest of `default_layers`), by gradient x activation of `attn.hook_z`.
    The paper found its heads by DLA, patching and the hijack score and targeted the 3-4 best; it notes that
    one head alone was not enough. X [2n, 1, d], y: activations at metric_layer to fit the direction (default:
    captured on n bundled prompts of each class)."""
    from interp.data.prompts import dataset

    L = model.check_layer(int(metric_layer if metric_layer is not None else max(default_layers(model))), "metric layer")
    if not isinstance(k, int) or not 1 <= k <= (L + 1) * model.n_heads:
        raise InterpError(f"k must be an integer between 1 and {(L + 1) * model.n_heads} (heads up to layer {L}), got {k!r}")
    if X is None:
        X, y = reference_activations(model, [L], n, seed, system)
    elif y is None:
        raise InterpError("X needs its labels y (1 = harmful)")
    mu0, mu1 = class_means(X[:, -1], y == 1)
    r = torch.nn.functional.normalize((mu1 - mu0).float(), dim=-1).to(model.device)
    mu0 = mu0.float().to(model.device)
    prompts = dataset("harmful_train", n=n, seed=seed)
    ids = model.encode(model.prepare_prompts(prompts, system=system))
    scores = torch.zeros(L + 1, model.n_heads, dtype=torch.float64)
    for start in range(0, len(ids), batch_size):
        batch = model.pad(ids[start:start + batch_size])
        zs: dict[int, Tensor] = {}
        resid: list[Tensor] = []

        def leaf(site: Site, z: Tensor) -> Tensor:  # each head output becomes a leaf: dm/dz through every later path
            zs[site.layer] = z.detach().requires_grad_(True)
            return zs[site.layer]

        fns: dict[Site, list[HookFn]] = {Site(l, "attn.hook_z"): [leaf] for l in range(L + 1)}
        fns[Site(L, RESID)] = [lambda site, x: resid.append(x)]
        forward(model, batch, hooks=fns, stop_after=L, logits=None, grad=True)
        m = ((resid[0][:, -1].float() - mu0) @ r).sum()
        layers = sorted(zs)
        grads = torch.autograd.grad(m, [zs[l] for l in layers])
        for l, g in zip(layers, grads):
            scores[l] += (zs[l][:, -1].detach().float() * g[:, -1].float()).sum(-1).sum(0).double().cpu()
    scores /= len(ids)
    order = scores.flatten().argsort(descending=True)[:k]
    heads = [(int(i) // model.n_heads, int(i) % model.n_heads) for i in order]
    return HeadChoice(heads, [float(scores[l, h]) for l, h in heads], L, "attribution", len(ids))


def _targets_path(out: Path | None) -> Path | None:
    return out.with_suffix(".targets.json") if out is not None else None


def choose_targets(model: "Model", config: AttackConfig, out: str | os.PathLike | None = None) -> dict:
    """The layers (and for attention-SSR the heads) config targets, with why: `{"layer_choice", "head_choice"}`.
    Saved as `RUN.targets.json` beside the log `out` and read back from there, so a resumed run keeps them."""
    out = Path(out) if out is not None else None
    path = _targets_path(out)
    if path is not None and path.is_file():
        saved = read_json(path)
        if saved.get("config") == _target_config(config):
            return saved
    if config.loss == "attention" and config.heads:
        layer_choice = LayerChoice(check_layers(model, [l for l, _ in config.heads]), "given (heads)")
    elif config.layers is not None:
        layer_choice = LayerChoice(check_layers(model, config.layers), "given")
    else:
        layer_choice = choose_layers(model, config.n_layers_auto, config.layer_window, config.n_train, config.data_seed,
                                     system=config.system)
    targets: dict[str, Any] = {"config": _target_config(config), "layer_choice": layer_choice.to_dict(), "head_choice": None}
    if config.method == "ssr" and config.loss == "attention" and not config.heads and config.head_choice == "attribution":
        targets["head_choice"] = choose_heads(model, config.n_heads, max(layer_choice.layers), config.n_train,
                                              config.data_seed, system=config.system).to_dict()
    if path is not None:
        write_json(path, targets)
    return targets


def _target_config(config: AttackConfig) -> dict:
    keys = ("method", "loss", "layers", "heads", "n_layers_auto", "layer_window", "head_choice", "n_heads",
            "n_train", "data_seed", "system")
    return {k: getattr(config, k) for k in keys}


def make_loss(model: "Model", config: AttackConfig, out: str | os.PathLike | None = None) -> AttackLoss:
    """The loss of `config`. Target layers: `config.layers`, else chosen by probe accuracy (`choose_layers`);
    attention-SSR's heads: `config.heads`, else chosen by attribution (`choose_heads`); both saved beside the
    log (`RUN.targets.json`) with the accuracies and scores. Probes from `config.probes` or directions from
    `config.directions` when given, else the ones saved beside the log `out` by an earlier run (`RUN.probes/`,
    `RUN.directions/`, with the class means in `RUN.centres.safetensors`), else fitted on `config.n_train`
    bundled prompts of each class and saved there, so that a resumed run uses the same ones."""
    if config.method == "gcg":
        return build_loss(model, config)
    targets = choose_targets(model, config, out)
    layers = targets["layer_choice"]["layers"]
    config = dataclasses.replace(config, layers=layers)
    out = Path(out) if out is not None else None
    if config.loss == "attention":
        heads = targets.get("head_choice") or {}
        loss = build_loss(model, config, heads=[tuple(h) for h in heads.get("heads", [])] or None,
                          head_scores=heads.get("scores"))
    elif config.loss == "probe":
        path = Path(config.probes) if config.probes else (out.with_suffix(".probes") if out else None)
        probes = None
        if path is not None and (config.probes or path.is_dir()):
            probes = LinearProbes.load(path, model)
            if not config.probes and not set(layers) <= set(probes.layers or []):
                probes = None  # the saved ones cover other layers: fit again
        if probes is None:
            probes = fit_probes(model, layers, config.n_train, config.data_seed)
            if path is not None:
                probes.save(path)
        loss = build_loss(model, config, probes=probes)
    else:
        loss = build_loss(model, config, directions=_directions(model, config, layers, out),
                          centres=_centres(model, config, layers, out))
    loss.targets = targets  # type: ignore[attr-defined]  # why these layers / heads, for the caller to report
    return loss


def _directions(model: "Model", config: AttackConfig, layers: list[int], out: Path | None) -> list[Direction]:
    path = Path(config.directions) if config.directions else (out.with_suffix(".directions") if out else None)
    if path is not None and (config.directions or all((path / f"layer_{l}").is_dir() for l in layers)):
        return load_directions(path, model, layers)
    directions = fit_directions(model, layers, config.n_train, config.data_seed)
    if path is not None:
        save_directions(directions, path)
    return directions


def _centres(model: "Model", config: AttackConfig, layers: list[int], out: Path | None) -> Tensor | None:
    """Steering-SSR's centre at each layer ([k, d]): the class means of the bundled training prompts, saved
    beside the log (`RUN.centres.safetensors`) and read back on resume."""
    centre = steering_centre(config)
    if centre == "origin":
        return None
    path = out.with_suffix(".centres.safetensors") if out is not None else None
    if path is not None and path.is_file():
        saved = read_tensors(path)
        have = saved["layers"].tolist()
        if set(layers) <= set(have):
            return saved[centre][[have.index(l) for l in layers]]
    X, y = reference_activations(model, layers, config.n_train, config.data_seed, config.system)
    centres = class_centres(X, y)
    if path is not None:
        write_tensors(path, {**centres, "layers": torch.tensor(layers)})
    return centres[centre]


def attack(model: "Model", behaviors: Sequence["Behavior"], out: str | os.PathLike, config: AttackConfig | None = None,
           **kwargs: Any) -> Summary:
    """`interp.attacks.attack` with the loss of `make_loss`: every input is checked before probes or directions are
    fitted and saved, and before the log is touched. `kwargs` go to the core attack (progress, on_attempt, ...)."""
    config = config or AttackConfig()
    check_run(model, behaviors, out, config)
    return run_attack(model, behaviors, out, config, loss=make_loss(model, config, out), **kwargs)


# ----- the analysis -----

def rerouting(model: "Model", log: str | os.PathLike | Sequence[dict], layers: Sequence[int] | None = None,
              n_reference: int = 32, seed: int = 0, system: System = DEFAULT_SYSTEM, points: bool = True) -> ReroutingResult:
    """Summarise an attack log and (points=True) place its prompts among harmful/harmless activations."""
    if isinstance(log, (str, os.PathLike)):
        if not Path(log).exists():
            raise InterpError(f"attack log {log} does not exist")
        summary = Summary.from_log(log)
    else:
        finals = final_rows(log)
        summary = Summary(next(iter(finals), {}).get("method", ""), "", Path("."), finals, len(finals))
    rows = summary.rows
    if not rows:
        raise InterpError("the attack log has no finished behaviour (no attempt with final=true)")
    name, model_name = rows[0].get("method", summary.name), rows[0].get("model", model.name)
    if model_name != model.name:
        raise InterpError(f"the log was written by an attack on {model_name}, not {model.name}; load that model")
    if layers is None:
        layers = rows[0].get("layers") or default_layers(model)
    layers = sorted({model.check_layer(int(l)) for l in layers})
    targets_path = _targets_path(Path(log)) if isinstance(log, (str, os.PathLike)) else None
    targets = read_json(targets_path) if targets_path is not None and targets_path.is_file() else None
    result = ReroutingResult(name, model_name, rows, summary.success_rate, summary.seconds_per_success,
                             summary.lower_bound, list(layers), targets=targets, best_of_n=summary.best_of_n,
                             single_attempt=summary.single_attempt)
    if not points:
        return result
    X, y = reference_activations(model, layers, n_reference, seed, system)  # [2n, k, d], 1 = harmful
    sites = [Site(l, RESID) for l in layers]
    texts = [r["behavior"] for r in rows] + [r["adversarial_prompt"] for r in rows]
    acts = model.capture(texts, sites, positions="last", system=system)
    result.system = acts.system
    nb = len(rows)
    for k, l in enumerate(layers):
        ref = X[:, k]
        fitted = pca(ref, 2)
        got = acts.acts[sites[k].name]
        groups = {"harmful": ref[y == 1], "harmless": ref[y == 0], "original": got[:nb], "attacked": got[nb:]}
        result.points[l] = {g: fitted.transform(v).float() for g, v in groups.items()}
        result.explained[l] = fitted.explained_variance_ratio.tolist()
        mu0, mu1 = class_means(ref, y == 1)
        diff = mu1 - mu0
        result.axis[l] = {g: (((v.double() - mu0) @ diff) / diff.dot(diff)).tolist() for g, v in groups.items()}
    return result
