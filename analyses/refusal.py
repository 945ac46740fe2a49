"""Refusal (and acceptance) directions: Arditi et al. 2024, "Refusal in Language Models Is Mediated by a
Single Direction", generalised to any two prompt sets.

The method. Chat-format the harmful and harmless instructions and capture the residual stream
(`hook_resid_pre`) at every end-of-instruction token (the template's tokens between the user's text and the
assistant's answer) and every layer. Each (position, layer) gives a candidate direction: the difference of the
class means, r = mean(harmful) - mean(harmless). A good refusal direction is causal in both senses:

(a) ablating r everywhere (removing it from the residual stream at every layer and from every attention and
    MLP write) makes harmful prompts stop refusing: a low refusal score on harmful validation prompts;
(b) adding r at its own layer makes harmless prompts refuse: a positive refusal score (Arditi's filter);
    afterwards the smallest multiple of r that does so on the validation prompts is recorded as the
    addition strength (`addition_alpha`; 1 in the paper, more on small quantised models);
(c) ablating it barely changes the model elsewhere: KL(clean || ablated) on harmless prompts below 0.1;
(d) it is not in the last 20% of layers (there it mostly reads out the answer, not the decision).

Among candidates that pass (b)-(d) the one with the lowest score in (a) is chosen. The refusal score is the
first-token log-odds of Arditi et al., with refusal tokens estimated from the model's own refusals
(`interp.judges.RefusalScore`).

Cost. Exact scoring needs a forward pass per (candidate, prompt, test); on a GPU all candidates can be
scored exactly (`shortlist=None`). By default the candidates are first ranked by attribution patching (one
forward and backward pass per validation set give first-order estimates of (a) and (b) for every candidate,
see `interp.attribution`) and only a shortlist is scored exactly, many candidates per forward
(`interp.scoring`).

Swapping the roles of the two sets gives an acceptance direction; any two sets give the direction that
separates them causally.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import plotly.graph_objects as go
import torch
from torch import Tensor

from interp.result import Result
from interp.attribution import residual_gradients
from interp.errors import InterpError
from interp.estimators import DiffInMeans
from interp.interventions import Ablate, Add
from interp.io import write_json, write_tensors
from interp.judges import RefusalScore, SubstringJudge
from interp import plots
from interp.scoring import ablation_scores, addition_scores, kl_rows
from interp.subspace import Direction, Subspace

if TYPE_CHECKING:
    from interp.model import Model


@dataclass
class RefusalConfig:
    n_val: int = 12  # validation prompts per class held out of the given sets (when none are given)
    shortlist: int | None = 12  # candidates scored exactly after attribution ranking; None: all of them
    max_layer_frac: float = 0.8  # filter (d): candidates only below this fraction of the depth
    kl_threshold: float = 0.1  # filter (c)
    batch_size: int = 16  # prompts per capture forward
    rows_per_forward: int = 32  # (candidate, prompt) rows per scoring forward
    one_candidate_per_forward: bool = False  # the slow reference loop, for the benchmark
    refusal_new_tokens: int = 8  # greedy tokens generated to estimate the refusal tokens
    addition_alphas: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0)  # tried for the addition strength
    seed: int = 0


@dataclass
class RefusalResult(Result):
    direction: Direction
    candidates: list[dict]
    chosen: dict
    baseline: dict
    refusal: RefusalScore
    position_tokens: list[str]
    layers: list[int]
    mean_diffs: Tensor  # [position, layer, d], the raw candidates
    projections: dict[str, Tensor]  # train prompts' activations at the chosen site, per class
    timings: dict
    config: RefusalConfig
    evaluation: dict | None = None
    title: str = "Refusal direction"

    def table(self, key: str) -> Tensor:
        """A [position, layer] table of one candidate column (NaN where not scored exactly)."""
        out = torch.full((len(self.position_tokens), len(self.layers)), float("nan"))
        for row in self.candidates:
            value = row.get(key)
            if value is not None:
                out[row["position_index"], self.layers.index(row["layer"])] = value
        return out

    def summary(self) -> dict:
        return {
            "chosen": self.chosen, "direction": self.direction.provenance, "baseline": self.baseline,
            "refusal_tokens": self.refusal.refusal_tokens_, "refusal_token_stats": self.refusal.stats_,
            "position_tokens": self.position_tokens, "timings_s": self.timings, "config": asdict(self.config),
            "evaluation": self.evaluation, "candidates": self.candidates,
        }

    def figures(self) -> dict[str, go.Figure]:
        mark_row = self.chosen["position_index"]
        mark = (mark_row, self.layers.index(self.chosen["layer"]))
        pos = [f"{i - len(self.position_tokens)} {t!r}" for i, t in enumerate(self.position_tokens)]
        figs = {}
        for key, title in [("ablation_score", "refusal score on harmful prompts, direction ablated (lower: refuses less)"),
                           ("addition_score", "refusal score on harmless prompts, direction added (higher: refuses more)"),
                           ("kl", "KL(clean || ablated) on harmless prompts"),
                           ("predicted_ablation", "attribution estimate of the ablation refusal score")]:
            table = self.table(key)
            if not torch.isnan(table).all():
                figs[key] = plots.heatmap(table, self.layers, pos, title, mark=mark)
        figs["pca"] = plots.pca_scatter(self.projections, f"PCA of resid_pre at layer {self.chosen['layer']}, "
                                        f"position {self.chosen['position']}")
        proj = {k: v.float() @ self.direction.vector for k, v in self.projections.items()}
        figs["projection"] = plots.histograms(proj, "projection onto the chosen direction", "⟨x, r̂⟩")
        return figs

    def save_artifacts(self, directory: Path) -> None:
        self.direction.save(directory)
        self.refusal.save(directory / "refusal_tokens.json")
        write_tensors(directory / "candidates.safetensors", {"mean_diffs": self.mean_diffs},
                      {"layers": ",".join(map(str, self.layers)), "positions": str(-len(self.position_tokens))})
        write_json(directory / "candidates.json", self.candidates)


def _check_sets(harmful: Sequence[str], harmless: Sequence[str]) -> None:
    for name, s in (("harmful", harmful), ("harmless", harmless)):
        if isinstance(s, str) or s is None or len(s) == 0:
            raise InterpError(f"the {name} prompt set is empty; the method needs prompts of both classes")


def _split(prompts: Sequence[str], n_val: int, seed: int, name: str) -> tuple[list[str], list[str]]:
    if len(prompts) < n_val + 2:
        raise InterpError(f"the {name} set has {len(prompts)} prompts; it needs at least {n_val + 2} "
                          f"({n_val} held out for validation, 2 to fit), or pass {name}_val")
    shuffled = list(prompts)
    random.Random(seed).shuffle(shuffled)
    return shuffled[n_val:], shuffled[:n_val]


def run(model: "Model", harmful: Sequence[str], harmless: Sequence[str], *, harmful_val: Sequence[str] | None = None,
        harmless_val: Sequence[str] | None = None, config: RefusalConfig | None = None,
        refusal: RefusalScore | None = None) -> RefusalResult:
    """Find the direction whose ablation stops refusals of `harmful` and whose addition makes `harmless` refuse.

    `refusal` gives the refusal tokens; by default they are estimated from the model's greedy answers to the
    validation prompts (`RefusalScore.fit`).
    """
    cfg = config or RefusalConfig()
    _check_sets(harmful, harmless)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    harmful_train, harmful_val = (list(harmful), list(harmful_val)) if harmful_val else _split(harmful, cfg.n_val, cfg.seed, "harmful")
    harmless_train, harmless_val = (list(harmless), list(harmless_val)) if harmless_val else _split(harmless, cfg.n_val, cfg.seed, "harmless")

    # 1. one capture pass: resid_pre at every end-of-instruction position and every candidate layer
    # layer 0's resid_pre at a template token is that token's embedding, the same for every prompt: no candidate
    layers = list(range(1, max(2, int(cfg.max_layer_frac * model.n_layers))))
    acts = model.capture(harmful_train + harmless_train, [f"blocks.{i}.hook_resid_pre" for i in layers], positions="eoi",
                         batch_size=cfg.batch_size, labels=[1] * len(harmful_train) + [0] * len(harmless_train),
                         progress=True)
    X = acts.stack("hook_resid_pre").transpose(1, 2)  # [n, position, layer, d]
    y = torch.tensor(acts.labels)
    dim = DiffInMeans().fit(X, y)
    mean_diffs = dim.mean_diff_  # [position, layer, d]
    timings["capture"] = time.perf_counter() - t0

    # 2. the judge: refusal tokens estimated from the model's own refusals; clean baselines
    t = time.perf_counter()
    ids_h = model.encode(model.prepare_prompts(harmful_val))
    ids_s = model.encode(model.prepare_prompts(harmless_val))
    clean_h = model.logits(harmful_val, batch_size=cfg.batch_size)
    clean_s = model.logits(harmless_val, batch_size=cfg.batch_size)
    if refusal is None:
        refusal = RefusalScore.fit(model, harmful_val, harmless_val, max_new_tokens=cfg.refusal_new_tokens,
                                   batch_size=cfg.batch_size, logits=torch.cat([clean_h, clean_s]))
    baseline = {"harmful_refusal_score": refusal.score_logits(clean_h).mean().item(),
                "harmless_refusal_score": refusal.score_logits(clean_s).mean().item()}
    timings["judge"] = time.perf_counter() - t

    # 3. rank every candidate by attribution, keep a shortlist
    P = mean_diffs.shape[0]
    cand = [(p, li) for p in range(P) for li in range(len(layers))]  # (position index, index into layers)
    raws = torch.stack([mean_diffs[p, li] for p, li in cand])
    units = raws / raws.norm(dim=-1, keepdim=True)
    cand_layers = torch.tensor([layers[li] for _, li in cand])
    rows = [{"position_index": p, "position": p - P, "token": acts.position_tokens[p], "layer": layers[li]}
            for p, li in cand]
    t = time.perf_counter()
    if cfg.shortlist is not None and cfg.shortlist < len(cand):
        g_h = residual_gradients(model, ids_h, refusal.score_logits, batch_size=cfg.batch_size)
        g_s = residual_gradients(model, ids_s, refusal.score_logits, batch_size=cfg.batch_size)
        pred_abl = baseline["harmful_refusal_score"] + g_h.ablation_effect(units)
        pred_add = baseline["harmless_refusal_score"] + g_s.addition_effect(raws, cand_layers)
        for row, a, b in zip(rows, pred_abl.tolist(), pred_add.tolist()):
            row["predicted_ablation"], row["predicted_addition"] = a, b
        rank = pred_abl.argsort().argsort() + (-pred_add).argsort().argsort()  # good at both (a) and (b)
        keep = rank.argsort()[: cfg.shortlist].sort().values.tolist()
    else:
        keep = list(range(len(cand)))
    timings["attribution"] = time.perf_counter() - t

    # 4. exact, batched scoring of the shortlist: ablation on harmful (refusal) and harmless (KL) in one pass
    t = time.perf_counter()
    nh = len(ids_h)
    kl = kl_rows(clean_s)

    def ablation_reduce(logits: Tensor, prompt: Tensor) -> Tensor:
        out = torch.empty(len(prompt))
        is_h = prompt < nh
        if is_h.any():
            out[is_h] = refusal.score_logits(logits[is_h])
        if (~is_h).any():
            out[~is_h] = kl(logits[~is_h], prompt[~is_h] - nh)
        return out

    opts = dict(rows_per_forward=cfg.rows_per_forward, one_candidate_per_forward=cfg.one_candidate_per_forward)
    abl = ablation_scores(model, ids_h + ids_s, units[keep], ablation_reduce, **opts)
    add = addition_scores(model, ids_s, raws[keep], cand_layers[keep].tolist(), lambda lg, p: refusal.score_logits(lg), **opts)
    for j, i in enumerate(keep):
        rows[i].update(ablation_score=abl[j, :nh].mean().item(), kl=abl[j, nh:].mean().item(), addition_score=add[j].mean().item())
    timings["scoring"] = time.perf_counter() - t

    # 5. filters (b)-(d), then the lowest ablation refusal score
    for i in keep:
        r = rows[i]
        reasons = [why for bad, why in [(r["addition_score"] <= 0, "addition does not induce refusal"),
                                         (r["kl"] >= cfg.kl_threshold, f"KL >= {cfg.kl_threshold}")] if bad]
        r["passes"], r["filtered"] = not reasons, "; ".join(reasons)
    best, relaxed = _select(rows, keep, cfg.kl_threshold)
    chosen = dict(rows[best], relaxed=relaxed)
    p, li = cand[best]
    l = layers[li]
    # 6. the addition strength: the smallest multiple of the mean difference that tips harmless validation
    # prompts to refusal (first-token score > 0); Arditi et al. add it once, which is too weak on some models
    t = time.perf_counter()
    alphas = torch.tensor(cfg.addition_alphas)
    by_alpha = addition_scores(model, ids_s, alphas[:, None] * mean_diffs[p, li], [l] * len(alphas),
                               lambda lg, _: refusal.score_logits(lg), **opts).mean(1)
    tipped = (by_alpha > 0).nonzero().flatten()
    chosen["addition_alpha"] = float(alphas[tipped[0]] if len(tipped) else alphas[by_alpha.argmax()])  # else the strongest
    chosen["addition_score_by_alpha"] = dict(zip(map(str, cfg.addition_alphas), by_alpha.tolist()))
    timings["alpha"] = time.perf_counter() - t
    direction = Direction.from_vector(mean_diffs[p, li], {
        "model": model.fingerprint, "site": f"blocks.{l}.hook_resid_pre", "layer": l, "position": p - P,
        "position_token": acts.position_tokens[p], "method": "diff_in_means (Arditi et al. 2024)",
        "data_hash": Subspace.data_hash(harmful_train, harmless_train), "n_harmful": len(harmful_train),
        "n_harmless": len(harmless_train), "addition_alpha": chosen["addition_alpha"],
    })
    projections = {"harmful": X[y == 1, p, li], "harmless": X[y == 0, p, li]}
    timings["total"] = time.perf_counter() - t0
    return RefusalResult(direction, rows, chosen, baseline, refusal, list(acts.position_tokens), layers, mean_diffs,
                         projections, timings, cfg)


def _select(rows: list[dict], keep: list[int], kl_threshold: float) -> tuple[int, str | None]:
    """The lowest ablation score among candidates passing every filter. When none passes (small models often
    have no candidate whose addition alone tips the first token to a refusal), relax openly and say so: drop the
    addition filter, then raise the KL threshold step by step (x2, x5, x10), then take the lowest KL."""
    best = lambda ids: min(ids, key=lambda i: rows[i]["ablation_score"])
    passing = [i for i in keep if rows[i]["passes"]]
    if passing:
        return best(passing), None
    for factor in (1, 2, 5, 10):
        ok = [i for i in keep if rows[i]["kl"] < kl_threshold * factor]
        if ok:
            return best(ok), f"no candidate passed all filters; dropped the addition filter, KL < {kl_threshold * factor:g}"
    return min(keep, key=lambda i: rows[i]["kl"]), "no candidate passed any filter; took the lowest KL"


@dataclass
class RefusalEvaluation(Result, Mapping):
    """What `evaluate` returns: refusal rates (substring judge) of greedy answers at baseline and under the
    direction, the KL its ablation costs on harmless prompts, and every generation.

    Also a read-only mapping with the keys "refusal_rate", "kl_harmless_ablation", "addition_alpha",
    "max_new_tokens" and "generations", so `ev["refusal_rate"]` and `dict(ev)` work as before."""

    refusal_rate: dict[str, float]  # harmful_baseline, harmful_ablated, harmless_baseline, harmless_added
    kl_harmless_ablation: float
    addition_alpha: float
    max_new_tokens: int
    generations: dict[str, list[str]]  # the prompts ("harmful", "harmless") and each condition's answers
    title: str = "Refusal direction: evaluation"

    def _keys(self) -> list[str]:
        return ["refusal_rate", "kl_harmless_ablation", "addition_alpha", "max_new_tokens", "generations"]

    def __getitem__(self, key: str):
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def summary(self) -> dict:
        return {k: self[k] for k in self}

    def figures(self) -> dict[str, go.Figure]:
        r = self.refusal_rate
        fig = go.Figure(layout=dict(title=f"refusal rate (substring judge, {self.max_new_tokens} new tokens)",
                                    yaxis=dict(title="refused", range=[0, 1]), barmode="group"))
        fig.add_bar(x=["harmful", "harmless"], y=[r["harmful_baseline"], r["harmless_baseline"]], name="baseline")
        fig.add_bar(x=["harmful", "harmless"], y=[r["harmful_ablated"], r["harmless_added"]],
                    name=f"ablated (harmful) / added x{self.addition_alpha:g} (harmless)")
        return {"refusal_rate": fig}


def evaluate(model: "Model", direction: Direction, harmful: Sequence[str], harmless: Sequence[str],
             max_new_tokens: int = 64, batch_size: int = 16, alpha: float | None = None,
             layer: int | None = None) -> RefusalEvaluation:
    """Greedy generations: harmful prompts at baseline and with the direction ablated, harmless prompts at
    baseline and with the direction added at `layer` (default: the direction's own layer; an error when it has
    none) with `alpha` times the mean difference (default: the strength calibrated on the validation prompts);
    refusal rates by the substring judge; KL on harmless."""
    if alpha is None:
        alpha = float(direction.provenance.get("addition_alpha", 1.0))
    judge = SubstringJudge()
    layer = direction.layer_for(model, layer)
    gen = dict(max_new_tokens=max_new_tokens, batch_size=batch_size)
    out = {"harmful": list(harmful), "harmless": list(harmless)}
    out["harmful_baseline"] = model.generate(harmful, **gen)
    out["harmful_ablated"] = model.generate(harmful, interventions=[Ablate(direction)], **gen)
    out["harmless_baseline"] = model.generate(harmless, **gen)
    out["harmless_added"] = model.generate(harmless, interventions=[Add(direction, layer, alpha)], **gen)
    rates = {k: sum(judge.refused(out[k])) / len(out[k]) for k in
             ("harmful_baseline", "harmful_ablated", "harmless_baseline", "harmless_added")}
    clean = model.logits(harmless, batch_size=batch_size)
    with model.intervene(Ablate(direction)):
        ablated = model.logits(harmless, batch_size=batch_size)
    kl = kl_rows(clean)(ablated, torch.arange(len(harmless))).mean().item()
    return RefusalEvaluation(rates, kl, alpha, max_new_tokens, out)
