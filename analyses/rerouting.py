"""Subspace rerouting: where do jailbreaks move a prompt's activations?

Winninger, Addad and Kapusta (2025), "Using Mechanistic Interpretability to Craft Adversarial Attacks against
Large Language Models", start from an interpretability observation: at the middle layers, the last-token
residual stream of harmful and harmless instructions forms two linearly separable clusters, and a jailbreak
works when it moves a harmful prompt's activations out of the "refusal" cluster into the "acceptance" one.
Their attack, subspace rerouting (SSR), optimises a few adversarial tokens (GCG-style greedy coordinate
search) for exactly that move, measured by linear probes, a refusal direction, or where safety heads look.
Because the loss is read at a middle layer, every forward stops there, which is why SSR needs far less time
per success than GCG, whose loss (the likelihood of "Sure, here is ...") needs the whole model.

`attack` runs the attack (`interp attack ... --out RUN.jsonl` calls it): it loads the probes or refusal
directions that probe- and steering-SSR need, or fits them on bundled harmful and harmless prompts and saves
them beside the log, then hands them to the core engine (`interp.attacks`), which takes them as values.

`rerouting` reads an attack run's log and reports:

- the attack success rate (substring judge on greedy responses) and the seconds per success (total seconds
  over successes; a lower bound when nothing succeeded);
- the loss curves (best loss after each search step, per behaviour);
- the rerouting picture: per targeted layer, the 2-D PCA of last-token `hook_resid_post` of bundled harmful
  and harmless prompts, with each behaviour's plain prompt and its adversarial prompt drawn on top (an arrow
  from one to the other), and, per layer, where the prompts sit on the harmful-harmless axis
  (0 = the harmless mean, 1 = the harmful mean, by projection on the difference of the means).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from interp.result import Result
from interp.attacks.losses import RESID, AttackLoss, check_layers
from interp.attacks.run import AttackConfig, Summary, build_loss, check_run, default_layers, final_rows
from interp.attacks.run import attack as run_attack
from interp.errors import InterpError
from interp.estimators import DiffInMeans, class_means, pca
from interp.sites import Site
from interp.subspace import Direction, Subspace
from probes import LinearProbes

if TYPE_CHECKING:
    from interp.model import Model
    from interp.prompts import Behavior

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

    title = "Subspace rerouting"

    def summary(self) -> dict:
        mean = {l: {g: sum(v) / len(v) for g, v in groups.items() if v} for l, groups in self.axis.items()}
        return {
            "method": self.name, "model": self.model, "finished": len(self.rows),
            "successes": sum(bool(r["success"]) for r in self.rows), "success_rate": self.success_rate,
            "seconds_per_success": self.seconds_per_success, "seconds_per_success_is_lower_bound": self.lower_bound,
            "layers": self.layers, "mean_harmful_axis_position": mean,
            "behaviors": [{k: r.get(k) for k in ("id", "behavior", "adversarial_prompt", "success", "loss", "step", "seconds")}
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
                          system: str | None = None) -> tuple[Float[Tensor, "n2 k d"], Tensor]:
    """Last-token hook_resid_post at `layers` for n bundled harmful and n harmless training prompts
    (Arditi et al.'s splits; harmless = Alpaca, CC BY-NC 4.0). Returns X [2n, k, d] and y (1 = harmful)."""
    from interp.prompts import dataset

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


def make_loss(model: "Model", config: AttackConfig, out: str | os.PathLike | None = None) -> AttackLoss:
    """The loss of `config`: probes from `config.probes` or directions from `config.directions` when given, else
    the ones saved beside the log `out` by an earlier run (`RUN.probes/`, `RUN.directions/`), else fitted on
    `config.n_train` bundled prompts of each class and saved there, so that a resumed run uses the same ones."""
    if config.method == "gcg" or config.loss == "attention":
        return build_loss(model, config)
    out = Path(out) if out is not None else None
    layers = check_layers(model, config.layers if config.layers is not None else default_layers(model))
    if config.loss == "probe":
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
        return build_loss(model, config, probes=probes)
    path = Path(config.directions) if config.directions else (out.with_suffix(".directions") if out else None)
    if path is not None and (config.directions or all((path / f"layer_{l}").is_dir() for l in layers)):
        directions = load_directions(path, model, layers)
    else:
        directions = fit_directions(model, layers, config.n_train, config.data_seed)
        if path is not None:
            save_directions(directions, path)
    return build_loss(model, config, directions=directions)


def attack(model: "Model", behaviors: Sequence["Behavior"], out: str | os.PathLike, config: AttackConfig | None = None,
           **kwargs: Any) -> Summary:
    """`interp.attacks.attack` with the loss of `make_loss`: every input is checked before probes or directions are
    fitted and saved, and before the log is touched. `kwargs` go to the core attack (progress, on_attempt, ...)."""
    config = config or AttackConfig()
    check_run(model, behaviors, out, config)
    return run_attack(model, behaviors, out, config, loss=make_loss(model, config, out), **kwargs)


# ----- the analysis -----

def rerouting(model: "Model", log: str | os.PathLike | Sequence[dict], layers: Sequence[int] | None = None,
              n_reference: int = 32, seed: int = 0, system: str | None = None, points: bool = True) -> ReroutingResult:
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
    result = ReroutingResult(name, model_name, rows, summary.success_rate, summary.seconds_per_success,
                             summary.lower_bound, list(layers))
    if not points:
        return result
    X, y = reference_activations(model, layers, n_reference, seed, system)  # [2n, k, d], 1 = harmful
    sites = [Site(l, RESID) for l in layers]
    texts = [r["behavior"] for r in rows] + [r["adversarial_prompt"] for r in rows]
    acts = model.capture(texts, sites, positions="last", system=system)
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
