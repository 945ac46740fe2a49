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

Faithful to the reference code (github.com/andyrdt/refusal_direction) by default:
- one departure: prompts are chat-formatted with the library's default system prompt (`DEFAULT_SYSTEM`, the
  chat template's own, e.g. Qwen's "You are Qwen, ..."), where the reference code renders no system turn
  (`system="none"`, one option away); a text is a third option. The direction's provenance and the Result
  record which was used (on Qwen2.5-Coder-0.5B the choice moves the held-out refusal rate a lot);
- after the refusal tokens are known, training and validation prompts are filtered by their baseline refusal
  score (`filter_data`): harmful prompts kept only if the model refuses them (score > 0), harmless ones only
  if it does not (score < 0). Counts per set are in the Result. A filter that leaves fewer than `min_kept`
  prompts is relaxed, first to the greedy first token (harmful kept where it is a refusal token: small models
  can refuse greedily with p(refusal tokens) below 0.5, a negative score, so the score filter can keep almost
  none; benchmarks/results/refusal_qwen05.json, `filter_counts`), then to the whole set; every relaxation is
  recorded and printed;
- validation prompts come from the separate bundled validation splits (`dataset("harmful_val")`,
  `dataset("harmless_val")`, `n_val` drawn with the seed), never from the training prompts; carving them out
  of the training sets is `val_source="carve"`.

Cost. Exact scoring needs a forward pass per (candidate, prompt, test); on a GPU all candidates can be
scored exactly (`shortlist=None`). By default the candidates are first ranked by attribution patching (one
forward and backward pass per validation set give first-order estimates of (a) and (b) for every candidate,
see `interp.circuits.attribution`) and only a shortlist is scored exactly, many candidates per forward
(`interp.directions.scoring`). KL, filter (c), has no first-order term at the clean point, so the ranking adds the energy
each candidate's ablation removes from the harmless prompts' residual writes (`ablation_energy`, from the same
backward pass): the size of the edit, the factor of KL's second-order term that costs nothing extra. The rank is
the sum of the three ranks (predicted ablation score, predicted addition score, energy). Whatever the
shortlist, the plain difference in means of every layer at the last end-of-instruction position is scored
exactly too (unless `score_every_layer=False`): the per-layer table (`per_layer`, figure "per_layer") shows what
each single layer's direction does beside the chosen one. `compare_searches` says whether a shortlist run and an
exhaustive run (`shortlist=None`) agree. Filters (b) and (c) are scored lazily (`lazy_filters`): every scored
candidate gets its ablation score, then they are walked in order of it (KL first, the addition score only where KL
passes) until one passes both. Every candidate with a lower ablation score failed a filter, so that one is the
rule's choice; when none passes, the walk has every KL the relaxed rules need. The reference scores every filter
of every candidate and then selects; the choice is the same.

Swapping the roles of the two sets gives an acceptance direction; any two sets give the direction that
separates them causally.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import plotly.graph_objects as go
import torch
from torch import Tensor

from interp.circuits.attribution import residual_gradients
from interp.core.interventions import Ablate, Add, Intervention, RowwiseAblate, RowwiseAdd
from interp.core.labels import token_label
from interp.core.model import DEFAULT_SYSTEM, System, system_record
from interp.core.result import Result
from interp.core.subspace import Direction, Subspace
from interp.data.prompts import dataset
from interp.directions import plots
from interp.directions.estimators import DiffInMeans
from interp.directions.scoring import ablation_scores, addition_scores, kl_rows
from interp.errors import InterpError
from interp.io import write_json, write_tensors
from interp.judges import RefusalScore, SubstringJudge
from interp.judges.measured import error_note, measured_errors

if TYPE_CHECKING:
    from interp.core.activations import Activations
    from interp.core.model import Model


@dataclass
class RefusalConfig:
    n_val: int = 32  # validation prompts per class drawn (seeded) when none are given
    val_source: str = "bundled"  # "bundled": the separate validation splits; "carve": held out of the training sets
    filter: bool = True  # keep harmful prompts with baseline refusal score > 0, harmless < 0 (Arditi's filter_data)
    min_kept: int = 8  # a filter keeping fewer prompts of a set is relaxed openly (greedy first token, then the
    # whole set): a mean difference or a validation score over fewer prompts is too noisy to select on (what each
    # filter kept on the bundled model: benchmarks/results/refusal_qwen05.json, `filter_counts`)
    system: System = DEFAULT_SYSTEM  # "default"/None: the template's own; "none"/NO_SYSTEM: no system turn (Arditi); a text
    shortlist: int | None = 32  # candidates scored exactly after attribution ranking; None: all of them
    score_every_layer: bool = True  # with a shortlist, also score every layer's last-position candidate exactly (the
    # per-layer table); False scores the shortlist alone (fewer forwards; the per-layer table keeps only those)
    max_layer_frac: float = 0.8  # filter (d): candidates only below this fraction of the depth
    kl_threshold: float = 0.1  # filter (c)
    batch_size: int = 16  # prompts per capture forward
    rows_per_forward: int = 32  # (candidate, prompt) rows per scoring forward
    one_candidate_per_forward: bool = False  # the slow reference loop, for the benchmark
    refusal_new_tokens: int = 8  # greedy tokens generated to estimate the refusal tokens
    addition_alphas: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0)  # tried in this order for the addition strength
    lazy_filters: bool = True  # filters (b) and (c) scored in order of ablation score until the first candidate
    # passes (the same choice as scoring them all; the per-layer table then lacks KL and addition of the others)
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
    filter_counts: dict = field(default_factory=dict)  # set -> {"given", "kept", "relaxed"}
    relaxations: list[str] = field(default_factory=list)  # every filter relaxed on the way, in words
    system: str = system_record(DEFAULT_SYSTEM)  # the system prompt the prompts were formatted with (`system_record`)
    validation: dict = field(default_factory=dict)  # the validation prompts used after filtering, per class
    activations: "Activations | None" = None  # run(keep_activations=True): every training prompt, every layer
    title: str = "Refusal direction"

    @property
    def per_layer(self) -> list[dict]:
        """The plain difference in means of every layer at the last end-of-instruction position, scored exactly:
        layer, validation refusal score under ablation, the cut of the baseline score, KL, addition score (None
        where the lazy filter scan stopped before the candidate: `RefusalConfig.lazy_filters`)."""
        last = len(self.position_tokens) - 1
        base = self.baseline["harmful_refusal_score"]
        return [{"layer": r["layer"], "ablation_score": r["ablation_score"], "cut": base - r["ablation_score"],
                 "kl": r.get("kl"), "addition_score": r.get("addition_score"), "passes": r.get("passes")}
                for r in self.candidates if r["position_index"] == last and "ablation_score" in r]

    def messages(self) -> list[str]:
        """What the CLI and the demo print: the filter counts and every relaxation."""
        counts = ", ".join(f"{k} {v['kept']}/{v['given']}" + (f" (relaxed, rule: {v['rule']})" if v["relaxed"] else "")
                           for k, v in self.filter_counts.items())
        lines = [f"filter (baseline refusal score > 0 harmful, < 0 harmless; kept/given): {counts}" if self.config.filter
                 else "filter: off (every prompt kept)"]
        return lines + [f"RELAXED: {r}" for r in self.relaxations]

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
            "evaluation": self.evaluation, "filter_counts": self.filter_counts, "relaxations": self.relaxations,
            "system": self.system, "n_validation": {k: len(v) for k, v in self.validation.items()},
            "per_layer": self.per_layer, "candidates": self.candidates,
        }

    def figures(self) -> dict[str, go.Figure]:
        mark_row = self.chosen["position_index"]
        mark = (mark_row, self.layers.index(self.chosen["layer"]))
        pos = [f"{i - len(self.position_tokens)} {token_label(t)}" for i, t in enumerate(self.position_tokens)]
        figs = {}
        for key, title in [("ablation_score", "refusal score on harmful prompts, direction ablated (lower: refuses less)"),
                           ("addition_score", "refusal score on harmless prompts, direction added (higher: refuses more)"),
                           ("kl", "KL(clean || ablated) on harmless prompts"),
                           ("predicted_ablation", "attribution estimate of the ablation refusal score")]:
            table = self.table(key)
            if not torch.isnan(table).all():
                figs[key] = plots.heatmap(table, self.layers, pos, title, mark=mark, gaps="not scored",
                                          caption=self.heatmap_caption(key, table))
        figs["per_layer"] = self.per_layer_figure()
        figs["pca"] = plots.pca_scatter(self.projections, f"PCA of resid_pre at layer {self.chosen['layer']}, "
                                        f"position {self.chosen['position']}")
        proj = {k: v.float() @ self.direction.vector for k, v in self.projections.items()}
        figs["projection"] = plots.histograms(proj, "projection onto the chosen direction", "⟨x, r̂⟩")
        return figs

    def heatmap_caption(self, key: str, table: Tensor) -> str:
        """What a candidate heat map shows, and why some of its cells are grey (not scored)."""
        n_scored, n = int((~torch.isnan(table)).sum()), table.numel()
        what = ("Each cell is one candidate direction: the difference in means of harmful and harmless prompts at one "
                "end-of-instruction token (rows, counted from the end) and one layer (columns); the black square is "
                "the chosen direction.")
        if key == "predicted_ablation":
            return what + (" These are first-order estimates from attribution patching, available for every "
                           "candidate; they only rank the candidates for exact scoring.")
        if key in ("kl", "addition_score") and self.config.lazy_filters:
            return what + (f" {n_scored} of the {n} candidates have this score: filters are scored in order of the "
                           "ablation score and the walk stops at the first candidate passing them all (the choice; "
                           "lazy_filters). Grey cells were not reached, which says nothing about their value; "
                           "lazy_filters=False scores every candidate the ablation map shows.")
        if n_scored == n:
            return what + f" All {n} candidates were scored exactly."
        every_layer = " plus every layer's last position" if self.config.score_every_layer else ""
        return what + (f" Only {n_scored} of the {n} candidates were scored exactly: the shortlist the attribution "
                       f"ranking picked (the top {self.config.shortlist}){every_layer}. Grey cells "
                       "were not scored, which says nothing about their value. To score every candidate, run with "
                       "shortlist=None (`--shortlist 0` on the command line); it takes several times longer.")

    def per_layer_figure(self) -> go.Figure:
        """Validation refusal score under ablation of each layer's last-position difference in means, the
        baseline, KL (right axis) and the chosen direction."""
        rows = self.per_layer
        fig = go.Figure(layout=dict(title="each layer's difference in means (last end-of-instruction position), ablated",
                                    xaxis=dict(title="layer"), yaxis=dict(title="harmful refusal score (val)"),
                                    yaxis2=dict(title="KL on harmless (val)", overlaying="y", side="right")))
        layers = [r["layer"] for r in rows]
        fig.add_scatter(x=layers, y=[r["ablation_score"] for r in rows], mode="lines+markers", name="ablated")
        fig.add_scatter(x=layers, y=[self.baseline["harmful_refusal_score"]] * len(rows), mode="lines",
                        name="baseline", line=dict(dash="dash"))
        fig.add_scatter(x=layers, y=[r["kl"] for r in rows], mode="lines+markers", name="KL", yaxis="y2")
        c = self.chosen
        fig.add_scatter(x=[c["layer"]], y=[c["ablation_score"]], mode="markers", name=f"chosen (position {c['position']})",
                        marker=dict(symbol="star", size=14))
        return fig

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


def validation_sets(harmful: Sequence[str], harmless: Sequence[str], harmful_val: Sequence[str] | None,
                    harmless_val: Sequence[str] | None, cfg: RefusalConfig) -> tuple[list[str], list[str], list[str], list[str]]:
    """(harmful train, harmful val, harmless train, harmless val): given validation sets as they are; otherwise
    `cfg.n_val` of the bundled validation split (seeded draw; fewer when the split is smaller), or, with
    val_source="carve", held out of the training set."""
    if cfg.val_source not in ("bundled", "carve"):
        raise InterpError(f"val_source must be 'bundled' or 'carve', got {cfg.val_source!r}")
    out = []
    for name, train, val in (("harmful", harmful, harmful_val), ("harmless", harmless, harmless_val)):
        if val:
            out += [list(train), list(val)]
        elif cfg.val_source == "carve":
            out += list(_split(train, cfg.n_val, cfg.seed, name))
        else:
            pool = dataset(f"{name}_val")
            val = dataset(f"{name}_val", n=min(cfg.n_val, len(pool)), seed=cfg.seed)
            overlap = set(val) & set(train)
            out += [[p for p in train if p not in overlap], val]  # a training prompt never validates itself
    return out[0], out[1], out[2], out[3]


def filter_by_score(prompts: list[str], scores: Tensor, refuse: bool, name: str, min_kept: int,
                    counts: dict, relaxations: list[str], first_token: Tensor | None = None) -> list[str]:
    """Arditi's filter_data: keep prompts whose baseline refusal score is > 0 (refuse=True) or < 0. When fewer
    than `min_kept` remain it is relaxed openly (recorded in `relaxations`): first to the greedy first token
    (`first_token`, True where the argmax is a refusal token; small models often refuse greedily with
    p(refusal tokens) < 0.5), then to the whole set."""
    want = "refuses" if refuse else "does not refuse"
    keep = [p for p, s in zip(prompts, scores.tolist()) if (s > 0 if refuse else s < 0)]
    counts[name] = {"given": len(prompts), "kept": len(keep), "passed": len(keep), "rule": "score", "relaxed": False}
    if len(keep) >= min_kept:
        return keep
    msg = f"{name}: the model {want} (refusal score {'>' if refuse else '<'} 0) only {len(keep)} of {len(prompts)} prompts"
    if first_token is not None:
        by_token = [p for p, t in zip(prompts, first_token.tolist()) if t == refuse]
        if len(by_token) >= min_kept:
            counts[name].update(kept=len(by_token), rule="first_token", relaxed=True)
            relaxations.append(f"{msg}; kept the {len(by_token)} whose greedy first token is "
                               f"{'' if refuse else 'not '}a refusal token")
            return by_token
    counts[name].update(kept=len(prompts), rule="none", relaxed=True)
    relaxations.append(f"{msg}, fewer than min_kept={min_kept}; kept all {len(prompts)} unfiltered")
    return list(prompts)


def rank_candidates(pred_ablation: Tensor, pred_addition: Tensor, pred_kl: Tensor | None) -> Tensor:
    """Candidate indices, best first, by the sum of three ranks: low predicted ablation refusal score (a), high
    predicted addition score (b), low predicted KL (c; None leaves it out). Ties keep index order."""
    rank = lambda x: (x[None, :] < x[:, None]).sum(1)  # how many are better: equal values share a rank
    total = rank(pred_ablation) + rank(-pred_addition)
    if pred_kl is not None:
        total = total + rank(pred_kl)
    return total.argsort(stable=True)


@dataclass
class RefusalData:
    """The inputs of `run`: training prompts of both classes, optional validation prompts (default: see
    `RefusalConfig.val_source`), and optionally the refusal tokens (`refusal`; default: estimated, see `run`)."""

    harmful: Sequence[str]
    harmless: Sequence[str]
    harmful_val: Sequence[str] | None = None
    harmless_val: Sequence[str] | None = None
    refusal: RefusalScore | None = None


def run(model: "Model", data: RefusalData, config: RefusalConfig | None = None,
        keep_activations: bool = False) -> RefusalResult:
    """Find the direction whose ablation stops refusals of `data.harmful` and whose addition makes `data.harmless`
    refuse.

    `data.refusal` gives the refusal tokens; by default they are estimated from the model's greedy answers to the
    (unfiltered) validation prompts (`RefusalScore.fit`), first, since the filters need them.

    keep_activations: the one capture pass takes every training prompt (before the filter) at every layer's
    `hook_resid_post` (end-of-instruction positions, labels 1 harmful, 0 harmless), reads the candidates from it
    (resid_pre of layer l is resid_post of layer l - 1) and keeps it in `RefusalResult.activations`, e.g. for
    `separation.from_activations` without a second capture pass. The direction is the same (to float noise).
    """
    cfg = config or RefusalConfig()
    harmful, harmless, harmful_val, harmless_val, refusal = (data.harmful, data.harmless, data.harmful_val,
                                                             data.harmless_val, data.refusal)
    _check_sets(harmful, harmless)
    system = cfg.system  # every prompt below is formatted with it
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    harmful_train, harmful_val, harmless_train, harmless_val = validation_sets(harmful, harmless, harmful_val, harmless_val, cfg)
    all_train = (harmful_train, harmless_train)  # before the filter

    # 1. the judge: refusal tokens estimated from the model's own refusals; every prompt's baseline score
    clean_h = model.logits(harmful_val, batch_size=cfg.batch_size, system=system)
    clean_s = model.logits(harmless_val, batch_size=cfg.batch_size, system=system)
    if refusal is None:
        refusal = RefusalScore.fit(model, harmful_val, harmless_val, max_new_tokens=cfg.refusal_new_tokens,
                                   batch_size=cfg.batch_size, logits=torch.cat([clean_h, clean_s]), system=system)
    timings["judge"] = time.perf_counter() - t0

    # 2. Arditi's filter: harmful prompts the model refuses, harmless ones it does not
    counts: dict[str, dict] = {}
    relaxations: list[str] = []
    if cfg.filter:
        t = time.perf_counter()
        first = refusal.greedy_refuses
        lh = model.logits(harmful_train, batch_size=cfg.batch_size, system=system)
        ls = model.logits(harmless_train, batch_size=cfg.batch_size, system=system)
        args: dict[str, Any] = dict(min_kept=cfg.min_kept, counts=counts, relaxations=relaxations)
        harmful_train = filter_by_score(harmful_train, refusal.score_logits(lh), True, "harmful_train", first_token=first(lh), **args)
        harmless_train = filter_by_score(harmless_train, refusal.score_logits(ls), False, "harmless_train", first_token=first(ls), **args)
        fh = set(filter_by_score(harmful_val, refusal.score_logits(clean_h), True, "harmful_val", first_token=first(clean_h), **args))
        fs = set(filter_by_score(harmless_val, refusal.score_logits(clean_s), False, "harmless_val", first_token=first(clean_s), **args))
        ih = [i for i, p in enumerate(harmful_val) if p in fh]
        is_ = [i for i, p in enumerate(harmless_val) if p in fs]
        harmful_val, harmless_val = [harmful_val[i] for i in ih], [harmless_val[i] for i in is_]
        clean_h, clean_s = clean_h[ih], clean_s[is_]
        timings["filter"] = time.perf_counter() - t
    baseline = {"harmful_refusal_score": refusal.score_logits(clean_h).mean().item(),
                "harmless_refusal_score": refusal.score_logits(clean_s).mean().item()}
    ids_h = model.encode(model.prepare_prompts(harmful_val, system=system))
    ids_s = model.encode(model.prepare_prompts(harmless_val, system=system))

    # 3. one capture pass: resid_pre at every end-of-instruction position and every candidate layer
    # layer 0's resid_pre at a template token is that token's embedding, the same for every prompt: no candidate
    t = time.perf_counter()
    layers = list(range(1, max(2, int(cfg.max_layer_frac * model.n_layers))))
    every: Activations | None = None
    if keep_activations:  # every prompt at every layer; the candidates are the filtered rows of it
        every = model.capture(all_train[0] + all_train[1], [f"blocks.{i}.hook_resid_post" for i in range(model.n_layers)],
                              positions="eoi", batch_size=cfg.batch_size, system=system, progress=True,
                              labels=[1] * len(all_train[0]) + [0] * len(all_train[1]))
        kept = (set(harmful_train), set(harmless_train))
        acts = every.rows([i for i, (p, c) in enumerate(zip(every.prompts, every.label_array())) if p in kept[1 - c]])
        X = acts.stack([f"blocks.{i - 1}.hook_resid_post" for i in layers])
    else:
        acts = model.capture(harmful_train + harmless_train, [f"blocks.{i}.hook_resid_pre" for i in layers],
                             positions="eoi", batch_size=cfg.batch_size, system=system, progress=True,
                             labels=[1] * len(harmful_train) + [0] * len(harmless_train))
        X = acts.stack("hook_resid_pre")
    assert acts.position_tokens is not None  # set by positions="eoi"
    X = X.transpose(1, 2)  # [n, position, layer, d]
    y = torch.tensor(acts.labels)
    dim = DiffInMeans().fit(X, y)
    mean_diffs = dim.mean_diff_  # [position, layer, d]
    timings["capture"] = time.perf_counter() - t

    # 4. rank every candidate by attribution (with the KL stand-in), keep a shortlist and every layer's last position
    P = mean_diffs.shape[0]
    cand = [(p, li) for p in range(P) for li in range(len(layers))]  # (position index, index into layers)
    raws = torch.stack([mean_diffs[p, li] for p, li in cand])
    units = raws / raws.norm(dim=-1, keepdim=True)
    cand_layers = torch.tensor([layers[li] for _, li in cand])
    rows: list[dict[str, Any]]  # one per candidate; the scores are added below
    rows = [{"position_index": p, "position": p - P, "token": acts.position_tokens[p], "layer": layers[li]}
            for p, li in cand]
    t = time.perf_counter()
    last = [i for i, (p, _) in enumerate(cand) if p == P - 1]
    if cfg.shortlist is not None and cfg.shortlist < len(cand):
        g_h = residual_gradients(model, ids_h, refusal.score_logits, batch_size=cfg.batch_size)
        g_s = residual_gradients(model, ids_s, refusal.score_logits, batch_size=cfg.batch_size)
        pred_abl = baseline["harmful_refusal_score"] + g_h.ablation_effect(units)
        pred_add = baseline["harmless_refusal_score"] + g_s.addition_effect(raws, cand_layers)
        energy = g_s.ablation_energy(units)
        for row, a, b, e in zip(rows, pred_abl.tolist(), pred_add.tolist(), energy.tolist()):
            row["predicted_ablation"], row["predicted_addition"], row["ablation_energy"] = a, b, e
        order = rank_candidates(pred_abl, pred_add, energy)
        keep = sorted(set(order[: cfg.shortlist].tolist()) | set(last if cfg.score_every_layer else []))
    else:
        keep = list(range(len(cand)))
    timings["attribution"] = time.perf_counter() - t

    # 5. exact, batched scoring: every kept candidate's ablation score on the harmful prompts; then filters (b) and
    # (c) in order of that score, as far as the choice needs (`lazy_filters`), or for every kept candidate
    t = time.perf_counter()
    opts = dict(rows_per_forward=cfg.rows_per_forward, one_candidate_per_forward=cfg.one_candidate_per_forward)
    refusal_reduce = lambda lg, _: refusal.score_logits(lg)
    kl = kl_rows(clean_s)
    abl = ablation_scores(model, ids_h, units[keep], refusal_reduce, **opts).mean(1)
    for j, i in enumerate(keep):
        rows[i]["ablation_score"] = abl[j].item()
    scan = sorted(keep, key=lambda i: (rows[i]["ablation_score"], i))
    block = max(1, cfg.rows_per_forward // max(len(ids_s), 1)) if cfg.lazy_filters else len(scan)
    for start in range(0, len(scan), block):
        part = scan[start:start + block]
        kls = ablation_scores(model, ids_s, units[part], kl, desc="KL", **opts).mean(1)
        for i, v in zip(part, kls.tolist()):
            rows[i]["kl"] = v
        need = part if not cfg.lazy_filters else [i for i in part if rows[i]["kl"] < cfg.kl_threshold]
        if need:
            adds = addition_scores(model, ids_s, raws[need], cand_layers[need].tolist(), refusal_reduce, **opts).mean(1)
            for i, v in zip(need, adds.tolist()):
                rows[i]["addition_score"] = v
        for i in part:
            r = rows[i]
            reasons = [why for bad, why in [(r.get("addition_score", 1.0) <= 0, "addition does not induce refusal"),
                                             (r["kl"] >= cfg.kl_threshold, f"KL >= {cfg.kl_threshold}")] if bad]
            r["passes"], r["filtered"] = not reasons, "; ".join(reasons)
        if cfg.lazy_filters and any(rows[i]["passes"] for i in part):
            break  # every candidate with a lower ablation score failed a filter: this block holds the choice
    timings["scoring"] = time.perf_counter() - t

    # 6. filters (b)-(d) applied: the lowest ablation refusal score among the candidates that pass
    best, relaxed = _select(rows, [i for i in scan if "passes" in rows[i]], cfg.kl_threshold)
    if relaxed:
        relaxations.append(f"direction selection: {relaxed}")
    if "addition_score" not in rows[best]:  # a relaxed choice the lazy scan did not need it for
        rows[best]["addition_score"] = addition_scores(model, ids_s, raws[[best]], [int(cand_layers[best])], refusal_reduce,
                                                       **opts).mean().item()
    chosen = dict(rows[best], relaxed=relaxed)
    p, li = cand[best]
    l = layers[li]
    # 7. the addition strength: the smallest multiple of the mean difference that tips harmless validation
    # prompts to refusal (first-token score > 0); Arditi et al. add it once, which is too weak on some models
    t = time.perf_counter()
    by_alpha: dict[str, float] = {}
    for alpha in cfg.addition_alphas:  # in the order given, stopping at the first that tips
        if alpha == 1.0 and "addition_score" in chosen:
            by_alpha[str(alpha)] = chosen["addition_score"]  # scored above: the mean difference itself
        else:
            by_alpha[str(alpha)] = addition_scores(model, ids_s, alpha * mean_diffs[p, li][None], [l], refusal_reduce,
                                                   desc="alpha", **opts).mean().item()
        if by_alpha[str(alpha)] > 0:
            break
    tipped = [a for a in cfg.addition_alphas if by_alpha.get(str(a), 0.0) > 0]
    chosen["addition_alpha"] = float(tipped[0] if tipped else max(cfg.addition_alphas, key=lambda a: by_alpha[str(a)]))
    chosen["addition_score_by_alpha"] = by_alpha  # the strengths tried, up to the first that tips
    timings["alpha"] = time.perf_counter() - t
    direction = Direction.from_vector(mean_diffs[p, li], {
        "model": model.fingerprint, "site": f"blocks.{l}.hook_resid_pre", "layer": l, "position": p - P,
        "position_token": acts.position_tokens[p], "method": "diff_in_means (Arditi et al. 2024)",
        "data_hash": Subspace.data_hash(harmful_train, harmless_train), "n_harmful": len(harmful_train),
        "n_harmless": len(harmless_train), "addition_alpha": chosen["addition_alpha"], "system": system_record(system),
    })
    projections = {"harmful": X[y == 1, p, li], "harmless": X[y == 0, p, li]}
    timings["total"] = time.perf_counter() - t0
    return RefusalResult(direction, rows, chosen, baseline, refusal, list(acts.position_tokens), layers, mean_diffs,
                         projections, timings, cfg, filter_counts=counts, relaxations=relaxations, system=system_record(system),
                         validation={"harmful": harmful_val, "harmless": harmless_val}, activations=every)


def compare_searches(shortlist: RefusalResult, exhaustive: RefusalResult, k: int = 5) -> dict:
    """Does a shortlist run choose what the exhaustive run (`shortlist=None`) chooses? `same_choice`; the top-k
    candidates by exact ablation score (the order the filter scan walks; every scored candidate has it) in each
    run and their overlap; `exhaustive_top_k_scored`: how many of the exhaustive top-k the shortlist scored at all;
    `n_filter_scored`: candidates whose filters were scored in each run (the lazy scan stops at the choice)."""
    key = lambda r: (r["position"], r["layer"])

    def top(res: RefusalResult) -> list[tuple[int, int]]:
        pool = [r for r in res.candidates if "ablation_score" in r]
        return [key(r) for r in sorted(pool, key=lambda r: r["ablation_score"])[:k]]

    a, b = top(shortlist), top(exhaustive)
    scored = {key(r) for r in shortlist.candidates if "ablation_score" in r}
    return {"same_choice": key(shortlist.chosen) == key(exhaustive.chosen), "shortlist_choice": key(shortlist.chosen),
            "exhaustive_choice": key(exhaustive.chosen), f"top{k}_shortlist": a, f"top{k}_exhaustive": b,
            f"top{k}_overlap": len(set(a) & set(b)) / max(len(b), 1),
            f"exhaustive_top{k}_scored": sum(c in scored for c in b) / max(len(b), 1),
            "n_scored_shortlist": len(scored), "n_candidates": len(exhaustive.candidates),
            "n_filter_scored": {"shortlist": sum("passes" in r for r in shortlist.candidates),
                                "exhaustive": sum("passes" in r for r in exhaustive.candidates)}}


def _select(rows: list[dict], keep: list[int], kl_threshold: float) -> tuple[int, str | None]:
    """The lowest ablation score among candidates passing every filter. When none passes (small models often
    have no candidate whose addition alone tips the first token to a refusal), relax openly and say so: drop the
    addition filter, then raise the KL threshold step by step (x2, x5, x10), then take the lowest KL. Marks the
    candidates the rule used allowed (`eligible`), for `compare_searches`."""
    def pick(ids: list[int], relaxed: str | None) -> tuple[int, str | None]:
        for i in keep:
            rows[i]["eligible"] = i in ids
        return min(ids, key=lambda i: rows[i]["ablation_score"]), relaxed

    passing = [i for i in keep if rows[i]["passes"]]
    if passing:
        return pick(passing, None)
    for factor in (1, 2, 5, 10):
        ok = [i for i in keep if rows[i]["kl"] < kl_threshold * factor]
        if ok:
            return pick(ok, f"no candidate passed all filters; dropped the addition filter, KL < {kl_threshold * factor:g}")
    lowest = min(keep, key=lambda i: rows[i]["kl"])
    return pick([lowest], "no candidate passed any filter; took the lowest KL")


@dataclass
class RefusalEvaluation(Result, Mapping):
    """What `evaluate` returns: refusal rates (substring judge) of greedy answers at baseline, under hook ablation
    and from the orthogonalised checkpoint, each beside the judge's false-positive rate (harmless baseline
    answers it calls refusals); the capability cost (first-token KL and cross-entropy on the plain model's
    harmless completions) of hook ablation and of the checkpoint; every generation.

    Also a read-only mapping over its fields, so `ev["refusal_rate"]` and `dict(ev)` work as before."""

    refusal_rate: dict[str, float]  # harmful_baseline, harmful_ablated, [harmful_orthogonalized,] harmless_baseline, harmless_added
    kl_harmless_ablation: float
    addition_alpha: float
    max_new_tokens: int
    generations: dict[str, Sequence[str]]  # the prompts ("harmful", "harmless") and each condition's answers
    judge_fp_rate: float | None = None  # harmless baseline answers the substring judge calls refusals
    capability: dict[str, dict] = field(default_factory=dict)  # "hook" / "orthogonalized" -> capability_cost(...)
    system: str | None = None  # the system prompt the answers were generated with (`system_record`)
    judge_errors: dict | None = None  # the substring judge's error rates on the hand-labelled answers (`measured_errors`)
    title: str = "Refusal direction: evaluation"

    def _keys(self) -> list[str]:
        """The old mapping's keys, then those of the newer measurements that were made."""
        new = [k for k, v in (("judge_fp_rate", self.judge_fp_rate), ("capability", self.capability),
                              ("system", self.system), ("judge_errors", self.judge_errors)) if v is not None and v != {}]
        return ["refusal_rate", "kl_harmless_ablation", "addition_alpha", "max_new_tokens", "generations"] + new

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

    def lines(self) -> list[str]:
        """Each refusal rate beside the judge's false-positive rate, and the capability costs, for printing."""
        fp = ("" if self.judge_fp_rate is None else
              f"(judge false-positive rate on harmless baseline answers {self.judge_fp_rate:.2f})")
        out = [f"refusal rate, substring judge, {self.max_new_tokens} new tokens, system={self.system!r} {fp}:"]
        out += [f"  {k:<24} {v:.2f}" for k, v in self.refusal_rate.items()]
        out += [f"  {error_note('substring_refusal')}"]
        out += [f"  capability cost, {k:<15} first-token KL {c['kl']:.3f}, CE {c['ce']:.3f} (plain model {c['ce_clean']:.3f})"
                for k, c in self.capability.items()]
        return out

    def figures(self) -> dict[str, go.Figure]:
        r = self.refusal_rate
        fp = "" if self.judge_fp_rate is None else f"; judge false-positive rate {self.judge_fp_rate:.2f}"
        fig = go.Figure(layout=dict(title=f"refusal rate (substring judge, {self.max_new_tokens} new tokens{fp})",
                                    yaxis=dict(title="refused", range=[0, 1]), barmode="group"))
        fig.add_bar(x=["harmful", "harmless"], y=[r["harmful_baseline"], r["harmless_baseline"]], name="baseline")
        fig.add_bar(x=["harmful", "harmless"], y=[r["harmful_ablated"], r["harmless_added"]],
                    name=f"ablated (harmful) / added x{self.addition_alpha:g} (harmless)")
        if "harmful_orthogonalized" in r:
            fig.add_bar(x=["harmful"], y=[r["harmful_orthogonalized"]], name="orthogonalised checkpoint")
        return {"refusal_rate": fig}


def orthogonalized_model(model: "Model", direction: Direction, directory: Path) -> "Model":
    """The orthogonalised checkpoint written to `directory` and loaded back with plain transformers, wrapped in
    a Model with the same tokenizer (what a user of the exported folder gets)."""
    from transformers import AutoModelForCausalLM

    from interp.core.model import Model
    from interp.steering.orthogonalize import export_orthogonalized

    export_orthogonalized(model, direction, directory)
    plain = AutoModelForCausalLM.from_pretrained(str(directory), dtype=model.dtype)
    plain = plain.to(model.device)  # type: ignore[arg-type]  # transformers' stubs: `.to` wrapped, typed as unbound
    return Model(plain, model.tokenizer, name=model.name)


CONDITIONS = ("harmful_baseline", "harmful_ablated", "harmless_baseline", "harmless_added")


def answers(model: "Model", direction: Direction, harmful: Sequence[str], harmless: Sequence[str],
            max_new_tokens: int = 256, batch_size: int = 16, alpha: float | None = None, layer: int | None = None,
            system: System = DEFAULT_SYSTEM, together: bool = False,
            conditions: Sequence[str] = CONDITIONS) -> dict[str, list]:
    """The greedy conditions of `evaluate` (rows stop at EOS), as `Completion`s, for each of `conditions`:
    "harmful_baseline", "harmful_ablated" (the direction ablated by hooks at every layer), "harmless_baseline",
    "harmless_added" (`alpha` times the mean difference added at `layer`; defaults as in `evaluate`).

    together=False: one `generate` call per condition. together=True: at most two, the baselines in one and the
    edits in the other (`RowwiseAblate` on the harmful rows and `RowwiseAdd` on the harmless rows of each batch of
    `batch_size`, the other rows' direction and vector zero, which leaves them untouched): half the decoding steps,
    for short runs on a CPU, where a step costs about as much for a few rows as for one. The answers are the same
    up to float noise (different batch neighbours and padding)."""
    if unknown := set(conditions) - set(CONDITIONS):
        raise InterpError(f"unknown conditions {sorted(unknown)}; choose from {', '.join(CONDITIONS)}")
    if alpha is None:
        alpha = float(direction.provenance.get("addition_alpha", 1.0))
    layer = direction.layer_for(model, layer)
    gen: dict[str, Any] = dict(max_new_tokens=max_new_tokens, system=system)
    edit: dict[str, list[Intervention]] = {"harmful_ablated": [Ablate(direction)],
                                           "harmless_added": [Add(direction, layer, alpha)]}
    if not together:
        return {k: model.generate(harmful if k.startswith("harmful") else harmless, interventions=edit.get(k, ()),
                                  batch_size=batch_size, **gen) for k in conditions}
    direction.check_for(model)
    unit, add = direction.vector.float(), alpha * direction.vector.float() * (direction.scale or 1.0)
    out: dict[str, list] = {}
    for h_key, s_key in (("harmful_baseline", "harmless_baseline"), ("harmful_ablated", "harmless_added")):
        hs, ss = list(harmful) * (h_key in conditions), list(harmless) * (s_key in conditions)
        prompts, nh = hs + ss, len(hs)
        if not prompts:
            continue
        if h_key == "harmful_baseline":
            got = model.generate(prompts, batch_size=batch_size, **gen)
        else:
            got = []
            for start in range(0, len(prompts), batch_size):
                is_h = (torch.arange(start, min(start + batch_size, len(prompts))) < nh)[:, None]
                rows: list[Intervention] = [RowwiseAblate(torch.where(is_h, unit, 0.0)),
                                            RowwiseAdd(torch.where(is_h, 0.0, add), [layer] * len(is_h))]
                got += model.generate(prompts[start:start + len(is_h)], interventions=rows, batch_size=len(is_h), **gen)
        out.update({h_key: got[:nh], s_key: got[nh:]})
    return {k: out[k] for k in conditions}


def evaluate(model: "Model", direction: Direction, harmful: Sequence[str], harmless: Sequence[str],
             max_new_tokens: int = 256, batch_size: int = 16, alpha: float | None = None,
             layer: int | None = None, system: System = DEFAULT_SYSTEM, orthogonalized: bool = True,
             reference_tokens: int = 32, together: bool = False) -> RefusalEvaluation:
    """Greedy generations of `max_new_tokens` (256 by default, long enough for late refusals; rows stop at EOS):
    harmful prompts at baseline, with the direction ablated by hooks and (`orthogonalized`) from the exported
    orthogonalised checkpoint; harmless prompts at baseline and with the direction added at `layer` (default:
    the direction's own; an error when it has none) with `alpha` times the mean difference (default: the
    strength calibrated on the validation prompts). Refusal rates by the substring judge, beside its false-
    positive rate on the harmless baseline answers. Capability cost (`interp.directions.scoring.capability_cost`) of the
    hooks and the checkpoint on the plain model's `reference_tokens`-token greedy completions of `harmless`.

    system: how every prompt is chat-formatted (`interp.core.model.System`), by default the library's
    `DEFAULT_SYSTEM` like everything else; the direction's own is `system=direction.provenance["system"]`.
    together: generate the four conditions in two calls (`answers`).
    """
    import tempfile

    from interp.directions.scoring import capability_cost, reference_completions

    if alpha is None:
        alpha = float(direction.provenance.get("addition_alpha", 1.0))
    judge = SubstringJudge()
    layer = direction.layer_for(model, layer)
    gen: dict[str, Any] = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, system=system)
    out: dict[str, Sequence[str]] = {"harmful": list(harmful), "harmless": list(harmless)}
    out.update(answers(model, direction, harmful, harmless, alpha=alpha, layer=layer, together=together, **gen))
    ref = reference_completions(model, harmless, reference_tokens, batch_size=min(batch_size, 8), system=system)
    capability = {"hook": capability_cost(model, ref, interventions=[Ablate(direction)], batch_size=min(batch_size, 8))}
    if orthogonalized:
        with tempfile.TemporaryDirectory() as tmp:
            edited = orthogonalized_model(model, direction, Path(tmp) / "checkpoint")
            out["harmful_orthogonalized"] = edited.generate(harmful, **gen)
            capability["orthogonalized"] = capability_cost(model, ref, edited=edited, batch_size=min(batch_size, 8))
            del edited
    rates: dict[str, float]
    rates = {k: sum(judge.refused(out[k])) / len(out[k]) for k in
             ("harmful_baseline", "harmful_ablated", "harmful_orthogonalized", "harmless_baseline", "harmless_added")
             if k in out}
    return RefusalEvaluation(rates, capability["hook"]["kl"], alpha, max_new_tokens, out,
                             judge_fp_rate=rates["harmless_baseline"], capability=capability, system=system_record(system),
                             judge_errors=measured_errors("substring_refusal"))


def explain_relaxations(res: RefusalResult, model_name: str, n: int, command: str = "interp demo",
                        n_option: str = "--n") -> list[str]:
    """In plain words, for the person running the demo: which of Arditi et al.'s checks had to be loosened, what
    that means for the direction they got, and what they can do about it. One line when nothing was loosened.

    `n` is the number of training prompts of each class; `command` and `n_option` are how the user asks for more
    (for `interp directions extract`: `--max-prompts`), so any command that runs the method can print the same."""
    if not res.relaxations:
        return ["Every check of Arditi et al.'s method passed as published: the direction was chosen without "
                "loosening any filter."]
    out = ["What the loosened checks mean for your result:"]
    for name, c in res.filter_counts.items():
        if not c.get("relaxed"):
            continue
        harmful = name.startswith("harmful")
        which = "training" if name.endswith("train") else "validation"
        used = ("the direction was estimated from" if which == "training" else
                "the candidate directions were scored on")
        if c["rule"] == "first_token" and harmful:
            out.append(f"- The model refused few of the harmful {which} prompts with confidence (its refusal score "
                       f"was positive for too few of them), so {used} the {c['kept']} of {c['given']} it refuses "
                       "with its first word instead: fewer, less clear-cut examples, so the result is noisier.")
        elif c["rule"] == "first_token":
            out.append(f"- Too few harmless {which} prompts were answered with confidence, so {used} the "
                       f"{c['kept']} of {c['given']} whose first word is not a refusal.")
        else:
            out.append(f"- Too few {'harmful' if harmful else 'harmless'} {which} prompts passed either test, so "
                       f"{used} all {c['given']}, including some the model {'answers' if harmful else 'refuses'}. "
                       + ("The direction then mixes 'refused' with 'sounds harmful', and ablating it may remove "
                          "less of the refusal." if which == "training" else
                          "Their scores are diluted, so the choice among the candidates is less sure."))
    if res.chosen.get("relaxed"):
        out.append("- No candidate direction passed every check (adding it should make harmless prompts refuse, and "
                   "removing it should barely change harmless answers), so the selection was loosened: "
                   f"{res.chosen['relaxed']}. The chosen direction lowers refusal on the validation prompts, but "
                   "it may not be a clean on/off switch for refusal.")
    out += ["What you can do:",
            "- Judge the direction by refusal rates on held-out prompts with and without it"
            + (" (printed above)" if command == "interp demo" else " (`refusal.evaluate`, or `interp steer --mode "
               "ablate` on prompts of your own)") + ", not by the filters: if ablation barely lowers the rate, the "
            "direction is weak on this model.",
            f"- Give the method more prompts to choose from: `{command} {n_option} {max(2 * n, 128)}`.",
            f"- Use a model that refuses more clearly, e.g. `{command} --model qwen2.5-coder-1.5b-instruct` "
            "(see `interp models`).",
            "- Try the prompts without a system turn, as Arditi et al. did: `interp directions extract --system none "
            "...`; small models often refuse more clearly one way or the other.",
            "Details: " + ("summary.json and refusal/result.json hold" if command == "interp demo" else
                           "result.json holds") + " the filter counts (`filter_counts`) and every loosened check in "
            "the method's own words (`relaxations`)."]
    if model_name:
        out[0] = f"What the loosened checks mean for your result on {model_name}:"
    return out
