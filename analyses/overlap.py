"""Are safety subspaces distinct from useful ones? Overlaps in activation space, in update space and in parameter
space.

The paper: Ponkshe et al., *Safety Subspaces are Not (Linearly) Distinct: A Fine-Tuning Case Study* (ICLR 2026;
reference code github.com/CERT-Lab/safety-subspaces). Its question: does safety live in a subspace of its own,
which could be protected while a model is fine-tuned on useful data? Its answer, in every space, is no.

**Activation space** (`run`, the reference's `exp-4-activation_spaces/activation_space.py`). For each
prompt set (harmful requests, and useful ones: Alpaca instructions, programming tasks) take the residual stream at
the last prompt token of every layer, stack the n prompts into an n x d matrix A per layer, and keep its energy
subspace: the top-k right singular vectors of A with k the smallest number holding a chosen `share` of
||A||_F^2. The reference sweeps the share over 0.01, 0.1, ..., 0.6 (its `energy_list`) and so does `run` by
default (`OverlapConfig.shares`, `ACTIVATION_SHARES`; one SVD per set and layer serves every share). Two sets'
subspaces are compared by the mean squared overlap ||B1 B2^T||_F^2 / min(k1, k2) (`Subspace.overlap`: 1 when one
contains the other, 0 when orthogonal) and their principal angles. Two random subspaces of dimensions k1, k2 in R^d
overlap by max(k1, k2) / d in expectation, the reference's `mso_random`, written beside every overlap with a
sampled baseline (`Subspace.random_overlap`: random subspaces of the second set's dimension against the first
set's subspace). If harmful prompts used directions of their own, their overlap with a useful set would sit near
that baseline, and clearly below the overlap of two useful sets with each other (the `alpaca vs code` pair is that
reference point). The summary's `sweep` is the reference's figure: per pair, the mean over its window of layers
(65-90% of the depth) at every share.
- Faithful: the shares, k (smallest k with cumulative energy >= share, from a full SVD: the reference's exact
  branch, which it takes whenever max(d, n) <= 10000) and the closed-form baseline max(k1, k2) / d; uncentred by
  default, as the reference runs it (`centre=False`; `centre=True` subtracts each set's mean first, the
  reference's `centering` option). Uncentred, the mean of the last-token activations, which every set shares, can
  hold more than the largest share of the sweep by itself: k is then 1 (the summary counts such layers,
  `layers_with_k1`) and the overlap compares the sets' means, not the directions their prompts vary along;
  centred, it compares those. A share such as 0.9 (`shares=(0.9,)`) lies outside the reference's activation sweep.
- Departs (each a named option or fixed, listed in the Result's `departures`): prompts get the model's chat
  template and the last token is the template's last (the assistant header), where the reference feeds raw text
  (`chat=False` for that); left padding, so the last column is every prompt's last token (the reference right-pads
  and reads column -1, a pad for the shorter prompts); every layer's `hook_resid_post` (the reference's
  hidden_states also count the embeddings, and it reports its window only: the summary gives the mean over that
  `window` too); the prompt sets are the ones given (the reference uses MATH / BeaverTails / ToxiGen prompts,
  5000 each); a sampled baseline and principal angles beside the closed form.

**Update space** (`updates`, the reference's `exp-3-update_spaces/update_spaces_functions.py`). Two fine-tunes of
one instruct model, one on useful data and one on harmful data (`make_update_fine_tunes` makes them with
`interp.steering.finetune`: useful instruction/answer pairs, and AdvBench's goal/target pairs, `harmful_pairs`);
per parameter the updates dU = W_useful - W_instruct and dH = W_harmful - W_instruct, each update's energy basis
(its top left singular vectors holding `share` of its energy, swept over 0.01 ... 0.99), the mean squared overlap
of the two bases and the baseline max(k_U, k_H) / m. If safety-relevant learning had directions of its own, the
harmful update's basis would overlap the useful one's near that baseline. The linear algebra, what is faithful
and what departs: `interp.steering.weight_updates` (its section "Update spaces"); the Result lists the departures.

**Parameter space** (`weights`, the reference's `utils/post_processing_subspace.py` and `scripts/projection*.py`;
the linear algebra is `interp.steering.weight_updates`, whose docstring states it). From a base, an aligned and a
fine-tuned checkpoint: per matrix the alignment update V and the fine-tune update U, the top-k left singular
vectors P of V (the exact SVD, as the reference runs it), the energy of U inside them against a random
k-subspace, and three edited checkpoints, `same` (W_aligned + P P^T U), `opposite` (W_aligned - P P^T U) and
`orthogonal` (W_aligned + U - P P^T U), each written as a folder and measured by the toolkit: the refusal rate on
harmful prompts (`SubstringJudge` on greedy answers), the same judge's rate on harmless prompts (its false
positives, or over-refusal), and the loss on useful text (mean token cross-entropy of held-out useful answers). The
reference measures harm with an LLM judge on AdvBench and utility with GSM8K accuracy; here both are cheap and
local, so a miniature fits on a CPU (`analyses.miniature` builds one from the bundled small model).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from interp.core.likelihood import continuations
from interp.core.result import Result
from interp.core.subspace import Subspace
from interp.directions.estimators import pca
from interp.errors import InterpError
from interp.io import write_tensors
from interp.judges import SubstringJudge
from interp.steering import weight_updates as W

if TYPE_CHECKING:
    from interp.core.model import Model
    from interp.steering.finetune import FineTune, FineTuneOptions

DEGREES = 180 / math.pi


# ===== activation space =====

ACTIVATION_SHARES = (0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)  # the reference's energy_list for activations

# What departs from the reference's activation-space experiment, each with the option that selects it.
ACTIVATION_DEPARTURES = {
    "chat": "prompts in the model's chat template, last token the template's last (chat=None where the tokenizer "
            "has one); chat=False feeds raw text, as the reference does",
    "padding": "left padding, so the last column is every prompt's last token (fixed: the reference right-pads and "
               "reads column -1, a pad token for the shorter prompts)",
    "layers": "every layer's hook_resid_post, with the reference's window of layers summarised apart (`window`; the "
              "reference's hidden_states also count the embeddings, and it reports the window only)",
    "prompt_sets": "the sets given (the bundled ones in the benchmark; the reference uses MATH, BeaverTails and "
                   "ToxiGen prompts, 5000 each)",
    "sampled_baseline": "a sampled random-subspace baseline and principal angles beside the reference's closed "
                        "form max(k1, k2) / d (`samples`, `angle_samples`)",
}


@dataclass
class OverlapConfig:
    shares: tuple[float, ...] = ACTIVATION_SHARES  # energy shares the subspaces hold (the reference's sweep)
    centre: bool = False  # subtract each set's mean first (the reference's `centering`; it runs False)
    samples: int = 200  # random subspaces for the sampled overlap baseline
    angle_samples: int = 20  # random subspaces for the principal-angle baseline
    seed: int = 0
    batch_size: int = 16
    chat: bool | None = None  # None: the chat template when the tokenizer has one
    window: tuple[float, float] = (0.65, 0.90)  # the depth range the reference reports
    pairs: tuple[tuple[str, str], ...] | None = None  # the sets compared (default: every pair of sets, in order)

    def check(self) -> None:
        self.shares = W.check_shares(self.shares)
        if not (self.samples >= 2 and isinstance(self.samples, int) and isinstance(self.angle_samples, int)
                and self.angle_samples >= 1):
            raise InterpError("samples must be an integer >= 2 and angle_samples >= 1")
        lo, hi = self.window
        if not 0 <= lo < hi <= 1:
            raise InterpError(f"window must be (lo, hi) with 0 <= lo < hi <= 1, got {self.window!r}")


def energy_fit(X: Float[Tensor, "n d"], centre: bool = False) -> tuple[Float[Tensor, "r d"], Tensor]:
    """Every right singular vector of X (rows, strongest first) and its squared singular value's share of the
    energy (of the second moment about 0, or about the mean if `centre`)."""
    fitted = pca(X, min(X.shape), center=centre)
    ratio = fitted.explained_variance_ratio
    if not float(ratio.sum()) > 0:
        raise InterpError("the activations have no energy (all rows equal after centring?); give distinct prompts")
    return fitted.components.float(), ratio


def energy_subspace(X: Float[Tensor, "n d"], share: float, centre: bool = False) -> tuple[Float[Tensor, "k d"], Tensor]:
    """The energy subspace of the rows of X: the top-k right singular vectors, k the smallest number whose squared
    singular values hold at least `share` of the total (of the second moment about 0, or about the mean if
    `centre`; `interp.steering.weight_updates.energy_k`, the reference's rule). Returns the [k, d] basis and every
    squared singular value's share of the energy."""
    components, ratio = energy_fit(X, centre)
    return components[:W.energy_k(ratio.sqrt(), share)], ratio


def last_token_activations(model: "Model", prompts: Sequence[str], options: OverlapConfig) -> Float[Tensor, "n layer d"]:
    """The residual stream after every block at each prompt's last token, in one capture pass."""
    acts = model.capture(prompts, "hook_resid_post", positions="last", batch_size=options.batch_size, chat=options.chat)
    return acts.stack("hook_resid_post")


@dataclass
class PairLayer:
    """Two sets' energy subspaces at one layer compared."""

    overlap: float
    expected: float  # max(k1, k2) / d
    sampled_mean: float  # overlap of the first set's subspace with random subspaces of the second's dimension
    sampled_std: float
    min_angle: float  # degrees
    mean_angle: float
    random_min_angle: float  # the same against random subspaces of the second's dimension
    random_mean_angle: float


def compare_pair(a: Subspace, b: Subspace, options: OverlapConfig, seed: int) -> PairLayer:
    base = a.random_overlap(n=options.samples, seed=seed, k=b.k)
    angles = a.principal_angles(b) * DEGREES
    gen = torch.Generator().manual_seed(seed)
    rand = [a.principal_angles(Subspace(torch.randn(b.k, a.d, generator=gen))) * DEGREES for _ in range(options.angle_samples)]
    return PairLayer(a.overlap(b), base.expected, base.mean, base.std, float(angles.min()), float(angles.mean()),
                     float(torch.stack([r.min() for r in rand]).mean()), float(torch.stack([r.mean() for r in rand]).mean()))


def pair_name(a: str, b: str) -> str:
    return f"{a} vs {b}"


def _mean(xs: Sequence[float], idx: Sequence[int] | None = None) -> float:
    idx = list(range(len(xs))) if idx is None else list(idx)
    return float(sum(xs[i] for i in idx) / len(idx))


@dataclass
class ActivationOverlap(Result):
    """Energy subspaces of every set at every layer and every share, and every pair's overlap and angles beside
    random baselines. `subspaces[share][set]` and `pairs[share]["a vs b"]` hold one entry per layer."""

    title = "Activation-space overlap of energy subspaces (Ponkshe et al.)"
    model: dict
    counts: dict[str, int]
    options: OverlapConfig
    subspaces: dict[float, dict[str, list[Subspace]]]
    energy: dict[str, list[Tensor]]  # per set and layer: every singular direction's share of the energy
    pairs: dict[float, dict[str, list[PairLayer]]]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def shares(self) -> list[float]:
        return list(self.subspaces)

    @property
    def layers(self) -> list[int]:
        return list(range(len(next(iter(self.energy.values())))))

    @property
    def d(self) -> int:
        return next(iter(next(iter(self.subspaces.values())).values()))[0].d

    def window_layers(self) -> list[int]:
        n = len(self.layers)
        lo, hi = self.options.window
        return list(range(int(lo * n), max(int(hi * n), int(lo * n) + 1)))  # the reference's range(int(.65 L), int(.9 L))

    def _pair_summary(self, rows: list[PairLayer]) -> dict:
        win = self.window_layers()
        col = {f: [getattr(r, f) for r in rows] for f in PairLayer.__dataclass_fields__}
        above = [i for i, r in enumerate(rows) if r.overlap > r.sampled_mean + 3 * r.sampled_std]
        return {"mean_overlap": round(_mean(col["overlap"]), 4), "mean_expected": round(_mean(col["expected"]), 4),
                "mean_sampled": round(_mean(col["sampled_mean"]), 4),
                "window_overlap": round(_mean(col["overlap"], win), 4),
                "window_expected": round(_mean(col["expected"], win), 4),
                "layers_above_random": len(above), "mean_min_angle": round(_mean(col["min_angle"]), 2),
                "mean_random_min_angle": round(_mean(col["random_min_angle"]), 2),
                "per_layer": {f: [round(v, 5) for v in vals] for f, vals in col.items()}}

    def summary(self) -> dict:
        win = self.window_layers()
        by_share: dict[str, dict] = {}
        for share in self.shares:
            subs = self.subspaces[share]
            by_share[f"{share:g}"] = {"k": {s: [sub.k for sub in layers] for s, layers in subs.items()},
                                      "layers_with_k1": {s: sum(sub.k == 1 for sub in layers) for s, layers in subs.items()},
                                      "pairs": {name: self._pair_summary(rows) for name, rows in self.pairs[share].items()}}
        names = list(next(iter(self.pairs.values())))
        sweep = {name: {"shares": self.shares,
                        **{f: [by_share[f"{s:g}"]["pairs"][name][f] for s in self.shares]
                           for f in ("window_overlap", "window_expected", "mean_overlap", "mean_expected", "mean_sampled")}}
                 for name in names}
        return {"model": self.model, "prompts": self.counts, "shares": self.shares, "centred": self.options.centre,
                "d": self.d, "window_layers": [win[0], win[-1]], "sweep": sweep, "by_share": by_share,
                "departures": ACTIVATION_DEPARTURES, "options": asdict(self.options), "seconds": self.seconds}

    def figures(self) -> dict[str, go.Figure]:
        x = self.layers
        colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
        centred = "centred" if self.options.centre else "uncentred"
        win = self.window_layers()
        last = self.shares[-1]
        sweep, over, angles, ks = go.Figure(), go.Figure(), go.Figure(), go.Figure()
        names = list(self.pairs[last])
        for i, name in enumerate(names):
            c = colours[i % len(colours)]
            rows_by = {s: self.pairs[s][name] for s in self.shares}
            sweep.add_trace(go.Scatter(x=self.shares, y=[_mean([r.overlap for r in rows_by[s]], win) for s in self.shares],
                                       name=name, mode="lines+markers", line=dict(color=c)))
            sweep.add_trace(go.Scatter(x=self.shares, y=[_mean([r.expected for r in rows_by[s]], win) for s in self.shares],
                                       name=f"{name}: random, max(k1,k2)/d", mode="lines", line=dict(color=c, dash="dash")))
            for s, rows in rows_by.items():
                shown = True if s == last else "legendonly"
                over.add_trace(go.Scatter(x=x, y=[r.overlap for r in rows], name=f"{name} ({s:g})", mode="lines+markers",
                                          line=dict(color=c), visible=shown))
                over.add_trace(go.Scatter(x=x, y=[r.expected for r in rows], name=f"{name} ({s:g}): random, max(k1,k2)/d",
                                          mode="lines", line=dict(color=c, dash="dash"), visible=shown))
            rows = rows_by[last]
            over.add_trace(go.Scatter(x=x, y=[r.sampled_mean for r in rows], name=f"{name} ({last:g}): random, sampled",
                                      mode="markers", marker=dict(color=c, symbol="x", size=6),
                                      error_y=dict(array=[r.sampled_std for r in rows], visible=True)))
            angles.add_trace(go.Scatter(x=x, y=[r.min_angle for r in rows], name=f"{name}: smallest", mode="lines+markers",
                                        line=dict(color=c)))
            angles.add_trace(go.Scatter(x=x, y=[r.mean_angle for r in rows], name=f"{name}: mean", mode="lines",
                                        line=dict(color=c, dash="dot")))
            angles.add_trace(go.Scatter(x=x, y=[r.random_min_angle for r in rows], name=f"{name}: smallest, random",
                                        mode="lines", line=dict(color=c, dash="dash")))
        sweep.update_layout(title=f"Mean squared overlap ({centred}) over layers {win[0]}-{win[-1]} against the energy share",
                            xaxis_title="energy share of each subspace", yaxis_title="overlap", yaxis_range=[0, 1.02])
        over.update_layout(title=f"Mean squared overlap of energy subspaces ({centred}) across depth, per share "
                                 f"(shown: {last:g}; the others in the legend)",
                           xaxis_title="layer (hook_resid_post)", yaxis_title="overlap", yaxis_range=[0, 1.02])
        angles.update_layout(title=f"Principal angles between the {last:g}-energy subspaces", xaxis_title="layer",
                             yaxis_title="degrees")
        for s in self.shares:
            for name, subs in self.subspaces[s].items():
                ks.add_trace(go.Scatter(x=x, y=[sub.k for sub in subs], name=f"{name} ({s:g})", mode="lines+markers",
                                        visible=True if s == last else "legendonly"))
        ks.update_layout(title="k: directions holding each share of the energy (1: one direction, usually the shared "
                               "mean, holds it)", xaxis_title="layer", yaxis_title="k")
        return {"sweep": sweep, "overlap": over, "angles": angles, "k": ks}

    def save_artifacts(self, directory: Path) -> None:
        """Every set's basis at every share and layer (`subspaces.safetensors`, keys `<share>.<set>.<layer>`) and
        every singular direction's share of the energy (keys `<set>.<layer>.energy`)."""
        tensors = {f"{share:g}.{s}.{i}": sub.basis for share, sets in self.subspaces.items()
                   for s, subs in sets.items() for i, sub in enumerate(subs)}
        tensors |= {f"{s}.{i}.energy": e for s, es in self.energy.items() for i, e in enumerate(es)}
        write_tensors(directory / "subspaces.safetensors", tensors)


def compare(acts: dict[str, Float[Tensor, "n layer d"]], pairs: Sequence[tuple[str, str]] | None = None,
            options: OverlapConfig | None = None, model: dict | None = None) -> ActivationOverlap:
    """Energy subspaces of captured activations (`last_token_activations` of each set) at every share of
    `options.shares`, and their overlaps. `pairs` default: every pair of sets, in order. One SVD per set and layer
    serves every share."""
    options = options or OverlapConfig()
    options.check()
    names = list(acts)
    pairs = list(pairs) if pairs is not None else [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    check_sets(acts, pairs)
    start = time.perf_counter()
    subspaces: dict[float, dict[str, list[Subspace]]] = {s: {} for s in options.shares}
    energy: dict[str, list[Tensor]] = {}
    for name, X in acts.items():
        energy[name] = []
        for share in options.shares:
            subspaces[share][name] = []
        for layer in range(X.shape[1]):
            components, ratio = energy_fit(X[:, layer], options.centre)
            energy[name].append(ratio.float())
            data = Subspace.data_hash(X[:, layer])
            for share in options.shares:
                basis = components[:W.energy_k(ratio.sqrt(), share)]
                subspaces[share][name].append(Subspace(basis, {
                    "model": model or {}, "site": f"blocks.{layer}.hook_resid_post", "layer": layer, "position": "last",
                    "set": name, "method": f"energy {share:g}" + (" centred" if options.centre else ""), "data": data}))
    compared = {share: {pair_name(a, b): [compare_pair(subspaces[share][a][i], subspaces[share][b][i], options,
                                                       options.seed + i) for i in range(len(subspaces[share][a]))]
                        for a, b in pairs} for share in options.shares}
    return ActivationOverlap(model or {}, {n: int(X.shape[0]) for n, X in acts.items()}, options, subspaces, energy,
                             compared, {"compare": round(time.perf_counter() - start, 2)})


def check_sets(sets: dict, pairs: Sequence[tuple[str, str]]) -> None:
    if len(sets) < 2:
        raise InterpError(f"give at least two prompt sets to compare, got {len(sets)}")
    for name, items in sets.items():
        if len(items) < 2:
            raise InterpError(f"prompt set {name!r} has {len(items)} prompt(s); an energy subspace needs at least 2")
    for pair in pairs:
        if len(pair) != 2 or any(p not in sets for p in pair):
            raise InterpError(f"pair {pair!r} must name two of the sets {', '.join(sets)}")


def run(model: "Model", data: dict[str, Sequence[str]], config: OverlapConfig | None = None) -> ActivationOverlap:
    """Capture every prompt set of `data` (name -> prompts) once (all layers, last token) and compare their energy
    subspaces at every share (see `compare`; `config.pairs`: which sets, default every pair)."""
    options = config or OverlapConfig()
    sets, pairs = data, options.pairs
    options.check()
    names = list(sets)
    check_sets(sets, list(pairs) if pairs is not None else [(a, b) for i, a in enumerate(names) for b in names[i + 1:]])
    start = time.perf_counter()
    acts = {name: last_token_activations(model, list(prompts), options) for name, prompts in sets.items()}
    capture_s = time.perf_counter() - start
    result = compare(acts, pairs, options, model.fingerprint)
    result.seconds["capture"] = round(capture_s, 2)
    return result


# ===== parameter space =====

@dataclass
class Evaluation:
    """What each checkpoint is measured on: harmful prompts (refusal rate), harmless prompts (the judge's rate on
    them: its false positives, or over-refusal) and useful (instruction, answer) pairs (loss on the answers)."""

    harmful: list[str]
    harmless: list[str]
    useful: list[tuple[str, str]]
    max_new_tokens: int = 32
    batch_size: int = 16

    def check(self) -> None:
        for name in ("harmful", "harmless"):
            items = getattr(self, name)
            if isinstance(items, str) or not items or not all(isinstance(p, str) and p.strip() for p in items):
                raise InterpError(f"{name} must be a non-empty list of prompts")
        if isinstance(self.useful, str) or not self.useful or not all(
                isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(x, str) and x.strip() for x in p)
                for p in self.useful):
            raise InterpError("useful must be a non-empty list of (instruction, answer) pairs of non-empty strings")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InterpError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")


def read_useful(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(instruction, answer) pairs from a JSONL file: one object per line with an instruction under one of the
    prompt keys (goal, prompt, instruction, behavior, question) and the text under `answer`."""
    from interp.data.prompts import PROMPT_KEYS
    from interp.io import jsonl_lines

    path = Path(path)
    if path.suffix != ".jsonl" or not path.is_file():
        raise InterpError(f"{path} is not an existing .jsonl file of {{\"prompt\": ..., \"answer\": ...}} objects")
    pairs = []
    for line, row in jsonl_lines(path, hint='write one {"prompt": ..., "answer": ...} object per line'):
        keys = {k.lower(): k for k in row} if isinstance(row, dict) else {}
        prompt = next((row[keys[k]] for k in PROMPT_KEYS if k in keys), None)
        answer = row.get("answer") if isinstance(row, dict) else None
        if not (isinstance(prompt, str) and prompt.strip() and isinstance(answer, str) and answer.strip()):
            raise InterpError(f"{path}, line {line}: needs a non-empty prompt (key prompt or instruction) and answer")
        pairs.append((prompt.strip(), answer))
    if not pairs:
        raise InterpError(f"{path} holds no (prompt, answer) pairs")
    return pairs


def useful_loss(model: "Model", pairs: Sequence[tuple[str, str]], batch_size: int = 16) -> float:
    """Mean cross-entropy per token of the answers given their chat-formatted instructions (nats/token)."""
    got = continuations(model, model.prepare_prompts([q for q, _ in pairs]), [[a] for _, a in pairs],
                        rows_per_forward=batch_size)
    return -float(sum(lp.sum() for lp in got.logprobs)) / float(sum(n.sum() for n in got.n_tokens))


def evaluate(model: "Model", evaluation: Evaluation) -> dict:
    """Refusal rate on the harmful prompts, the judge's rate on the harmless ones, and the useful-text loss."""
    judge = SubstringJudge()
    answers = model.generate(evaluation.harmful + evaluation.harmless, max_new_tokens=evaluation.max_new_tokens,
                             batch_size=evaluation.batch_size)
    refused = judge.refused(answers)
    nh = len(evaluation.harmful)
    return {"refusal_rate": sum(refused[:nh]) / nh, "harmless_refusal_rate": sum(refused[nh:]) / len(evaluation.harmless),
            "useful_loss": useful_loss(model, evaluation.useful, evaluation.batch_size),
            "example_harmful": answers[0], "example_harmless": answers[nh]}


# What departs from the reference's projections, each with the option that selects it (or fixed).
WEIGHT_DEPARTURES = {
    "svd": "P from the exact SVD (svd='exact', default), what the reference runs since its torch.linalg.svd_lowrank "
           "call raises and its except runs torch.linalg.svd; svd='randomized' uses seeded torch.svd_lowrank",
    "full_fraction": "fraction=1 keeps every direction of V (fixed; the reference's left_singular_basis returns None "
                     "for frac >= 1 and projects matrices on the line of V)",
    "unchanged": "a matrix alignment left exactly unchanged is skipped and listed (fixed)",
    "energy": "energies sum over the matrices only (fixed; the reference's energy_kept_ratio also counts vectors)",
    "precision": "updates are float32 differences and checkpoints float32 (fixed; the reference subtracts and "
                 "writes float16)",
    "measures": "refusal by SubstringJudge on greedy answers and loss on useful text (Evaluation), where the "
                "reference uses an LLM judge on AdvBench and GSM8K accuracy",
}


@dataclass
class WeightOverlap(Result):
    """The projections of one (base, aligned, fine-tuned) triple at every rank, and every checkpoint's measures."""

    title = "Parameter-space overlap: the fine-tune's update inside the alignment subspace (Ponkshe et al.)"
    sources: dict[str, str]
    projections: dict[str, dict]  # rank label -> totals, per-matrix stats, unchanged matrices
    models: list[dict]  # one row per checkpoint: name, method, rank, path, and the measures if evaluated
    seed: int
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        return {"sources": self.sources, "seed": self.seed, "models": self.models,
                "projections": self.projections, "departures": WEIGHT_DEPARTURES, "seconds": self.seconds}

    def table(self) -> list[dict]:
        """One row per checkpoint with the measures (no per-matrix detail)."""
        keep = ("name", "method", "rank", "energy", "refusal_rate", "harmless_refusal_rate", "useful_loss")
        return [{k: row.get(k) for k in keep} for row in self.models]

    def figures(self) -> dict[str, go.Figure]:
        figs: dict[str, go.Figure] = {}
        energy = go.Figure()
        for label, p in self.projections.items():
            rows = p["matrices"]
            names = [r["name"] for r in rows]
            energy.add_trace(go.Scatter(x=list(range(len(rows))), y=[r["energy"] for r in rows], mode="markers",
                                        name=f"{label}: top-k of V", text=names))
            energy.add_trace(go.Scatter(x=list(range(len(rows))), y=[r["random_energy"] for r in rows], mode="markers",
                                        marker=dict(symbol="x", size=5), name=f"{label}: random k-subspace", text=names))
            energy.add_trace(go.Scatter(x=list(range(len(rows))), y=[r["expected"] for r in rows], mode="lines",
                                        line=dict(dash="dash"), name=f"{label}: k/m", text=names))
        energy.update_layout(title="Energy of the fine-tune update U inside the top-k left singular subspace of the "
                                   "alignment update V, per matrix", xaxis_title="matrix (model order; hover for the name)",
                             yaxis_title="||P P^T U||^2 / ||U||^2", yaxis_range=[0, 1.02])
        figs["energy"] = energy
        measured = [r for r in self.models if r.get("refusal_rate") is not None]
        if measured:
            trade = go.Figure(go.Scatter(x=[r["refusal_rate"] for r in measured], y=[r["useful_loss"] for r in measured],
                                         mode="markers+text", text=[r["name"] for r in measured], textposition="top center"))
            trade.update_layout(title="Refusal of harmful prompts against loss on useful text",
                                xaxis_title="refusal rate on harmful prompts (substring judge)",
                                yaxis_title="useful-text loss (nats/token)")
            figs["tradeoff"] = trade
            cols = ["name", "energy", "refusal_rate", "harmless_refusal_rate", "useful_loss"]
            cells = [[r["name"] for r in measured]] + [[_fmt(r.get(c)) for r in measured] for c in cols[1:]]
            table = go.Figure(go.Table(header=dict(values=["checkpoint", "energy of U kept", "refusal (harmful)",
                                                           "refusal (harmless)", "useful loss"]),
                                       cells=dict(values=cells)))
            table.update_layout(title="Checkpoints")
            figs["table"] = table
        return figs


def _fmt(v) -> str:
    return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def checkpoint_dir(out: str | os.PathLike, method: str, rank: W.Rank) -> Path:
    return Path(out) / "checkpoints" / f"{method}-{rank.label}"


def check_weights_inputs(base, aligned, finetuned, out, ranks: Sequence[W.Rank], methods: Sequence[str],
                         evaluation: Evaluation | None) -> None:
    """Everything that can be checked before a checkpoint is loaded: one clear error, nothing written."""
    if isinstance(ranks, W.Rank) or not ranks or not all(isinstance(r, W.Rank) for r in ranks):
        raise InterpError("ranks must be a non-empty list of Rank(k=...) or Rank(fraction=...)")
    if len({r.label for r in ranks}) != len(ranks):
        raise InterpError(f"ranks repeat: {[r.label for r in ranks]}")
    if isinstance(methods, str) or not methods or any(m not in W.METHODS for m in methods):
        raise InterpError(f"methods must be a non-empty list of {', '.join(W.METHODS)}; got {methods!r}")
    if evaluation is not None:
        evaluation.check()
    for r in ranks:
        for m in methods:
            W.check_out(checkpoint_dir(out, m, r))
    W.check_sources(base, aligned, finetuned)


def weights(base: str | os.PathLike, aligned: str | os.PathLike, finetuned: str | os.PathLike, out: str | os.PathLike,
            ranks: Sequence[W.Rank] = (W.Rank(fraction=0.1), W.Rank(fraction=0.5)), methods: Sequence[str] = W.METHODS,
            evaluation: Evaluation | None = None, seed: int = 0, device: str | None = None,
            progress: bool = True, svd: str = "exact") -> WeightOverlap:
    """Project the fine-tune's update on the alignment subspace at every rank, write `same` / `opposite` /
    `orthogonal` checkpoints under `out/checkpoints/<method>-<rank>`, and measure every checkpoint (the three
    sources too) with `evaluation` (None: no measurement). Every rank is computed before anything is written.
    `svd`: "exact" (what the reference runs) or "randomized" (a named departure; `interp.steering.weight_updates`)."""
    from interp.core.loading import load

    ranks, methods = list(ranks), list(methods)
    W.check_svd(svd)
    check_weights_inputs(base, aligned, finetuned, out, ranks, methods, evaluation)
    t0 = time.perf_counter()
    w_base, w_aligned, w_ft = W.load_weights(base), W.load_weights(aligned), W.load_weights(finetuned)
    names = W.matrices(w_base, w_aligned, w_ft)  # shapes checked
    for r in ranks:
        for n in names:
            r.of(n, w_base[n].shape)  # k > min(m, n) fails before any SVD
    projections = [W.projection(w_base, w_aligned, w_ft, r, seed=seed, progress=progress, svd=svd) for r in ranks]
    del w_base
    t1 = time.perf_counter()
    template = load(finetuned, device="cpu", dtype=torch.float32)  # a private copy whose weights are overwritten
    rows: list[dict]  # one per checkpoint; evaluate() adds its measures
    rows = [{"name": "base", "method": None, "rank": None, "path": str(base)},
            {"name": "aligned", "method": None, "rank": None, "path": str(aligned)},
            {"name": "fine-tuned", "method": None, "rank": None, "path": str(finetuned), "energy": 1.0}]
    summaries: dict[str, dict] = {}
    for proj in projections:
        totals = proj.totals()
        summaries[proj.rank.label] = {"rank": asdict(proj.rank), "svd": svd, **totals, "unchanged_matrices": proj.unchanged,
                                      "matrices": W.stats_rows(proj.stats)}
        for method in methods:
            path = checkpoint_dir(out, method, proj.rank)
            meta = {"method": method, "rank": asdict(proj.rank), "seed": seed, "svd": svd, "energy": totals["energy"],
                    "sources": {"base": str(base), "aligned": str(aligned), "finetuned": str(finetuned)}}
            W.write_projection(template, proj.weights(w_aligned, w_ft, method), path, meta)
            kept = {"same": totals["energy"], "opposite": totals["energy"], "orthogonal": 1 - totals["energy"]}[method]
            rows.append({"name": f"{method} {proj.rank.label}", "method": method, "rank": proj.rank.label,
                         "path": str(path), "energy": kept})
    del template, w_aligned, w_ft, projections
    t2 = time.perf_counter()
    if evaluation is not None:
        for row in rows:
            model = load(row["path"], device=device)
            row.update(evaluate(model, evaluation))
            del model
    seconds = {"project": round(t1 - t0, 1), "write": round(t2 - t1, 1), "evaluate": round(time.perf_counter() - t2, 1)}
    return WeightOverlap({"base": str(base), "aligned": str(aligned), "finetuned": str(finetuned)}, summaries, rows,
                         seed, seconds)


# ===== update spaces: a useful and a harmful fine-tune of one model =====

# What departs from the reference's update-space experiment, each with the option that selects it.
UPDATE_DEPARTURES = {
    "svd": "svd='reference' (default) follows the reference's rule, the exact SVD where max(m, n) <= 10000 and its "
           "torch.svd_lowrank fallback above (seeded here); svd='exact' runs the exact SVD for every tensor",
    "delta_dtype": "updates are float32 differences (delta_dtype='float32'); 'float16' subtracts float16 weights as "
                   "the reference's float16 state dicts do",
    "unchanged": "a parameter either fine-tune left exactly unchanged has no energy basis and is listed in "
                 "`unchanged` (fixed; the reference compares arbitrary singular vectors of a zero matrix)",
    "tied": "tied parameters (an unembedding tied to the embedding) are compared once (fixed)",
    "granularity": "per tensor, the reference's default (its `layer` grouping cannot run)",
    "fine_tunes": "the fine-tunes this toolkit makes (interp.steering.finetune: full fine-tunes in float32 on the "
                  "chat template; make_update_fine_tunes: useful = instruction/answer pairs given, harmful = AdvBench "
                  "goal/target pairs); the reference fine-tunes on MetaMathQA and BeaverTails' unsafe answers",
}


@dataclass
class UpdateOverlap(Result):
    """The update-space comparison of a useful and a harmful fine-tune of one instruct model: per parameter and
    energy share, the overlap of the two updates' energy bases beside max(k_U, k_H) / m."""

    title = "Update-space overlap of a useful and a harmful fine-tune (Ponkshe et al.)"
    sources: dict[str, str]
    comparison: W.UpdateComparison
    fine_tunes: dict = field(default_factory=dict)  # the fine-tunes' summaries, when made by make_update_fine_tunes
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        c = self.comparison
        return {"sources": self.sources, "shares": list(c.shares), "svd": c.svd, "delta_dtype": c.delta_dtype,
                "granularity": "tensor", "totals": c.totals(), "unchanged": c.unchanged,
                "tensors": [{**asdict(r), "shape": list(r.shape)} for r in c.rows],
                "update_norms": {n: list(v) for n, v in c.norms.items()}, "departures": UPDATE_DEPARTURES,
                "fine_tunes": self.fine_tunes, "seconds": self.seconds}

    def figures(self) -> dict[str, go.Figure]:
        c = self.comparison
        totals = c.totals()
        shares = list(c.shares)
        sweep = go.Figure()
        for group, colour in (("all", "#1f77b4"), ("matrices", "#d62728"), ("vectors", "#2ca02c")):
            if not totals[f"{shares[0]:g}"][group]["tensors"]:
                continue
            sweep.add_trace(go.Scatter(x=shares, y=[totals[f"{s:g}"][group]["overlap"] for s in shares], name=group,
                                       mode="lines+markers", line=dict(color=colour)))
            sweep.add_trace(go.Scatter(x=shares, y=[totals[f"{s:g}"][group]["expected"] for s in shares],
                                       name=f"{group}: random, max(k_U,k_H)/m", mode="lines",
                                       line=dict(color=colour, dash="dash")))
        sweep.update_layout(title="Useful vs harmful fine-tune updates: mean squared overlap of their energy bases, "
                                  "mean over tensors", xaxis_title="energy share of each basis",
                            yaxis_title="overlap", yaxis_range=[0, 1.02])
        per = go.Figure()
        share = 0.9 if 0.9 in shares else shares[-1]  # the reference function's default share
        rows = [r for r in c.at(share) if r.matrix]
        per.add_trace(go.Scatter(x=list(range(len(rows))), y=[r.overlap for r in rows], mode="markers",
                                 name="overlap", text=[r.name for r in rows]))
        per.add_trace(go.Scatter(x=list(range(len(rows))), y=[r.expected for r in rows], mode="markers",
                                 marker=dict(symbol="x", size=5), name="random, max(k_U,k_H)/m", text=[r.name for r in rows]))
        per.update_layout(title=f"Per matrix at share {share:g}: overlap of the two updates' energy bases",
                          xaxis_title="matrix (model order; hover for the name)", yaxis_title="overlap",
                          yaxis_range=[0, 1.02])
        return {"update_sweep": sweep, "update_per_matrix": per}


def updates(instruct: str | os.PathLike, useful: str | os.PathLike, harmful: str | os.PathLike,
            shares: Sequence[float] = W.UPDATE_SHARES, svd: str = "reference", delta_dtype: str = "float32",
            seed: int = 0, progress: bool = True) -> UpdateOverlap:
    """The reference's update-space comparison (`interp.steering.weight_updates.update_overlap`) of two checkpoints
    fine-tuned from `instruct`: `useful` (fine-tuned on useful data) and `harmful` (on harmful data)."""
    W.check_shares(shares)
    W.check_svd(svd, W.UPDATE_SVD)
    W.check_sources(instruct, useful, harmful)
    t0 = time.perf_counter()
    w_i, w_u, w_h = W.load_weights(instruct), W.load_weights(useful), W.load_weights(harmful)
    t1 = time.perf_counter()
    comparison = W.update_overlap(w_i, w_u, w_h, shares, svd, delta_dtype, seed, progress)
    return UpdateOverlap({"instruct": str(instruct), "useful": str(useful), "harmful": str(harmful)}, comparison,
                         seconds={"load": round(t1 - t0, 1), "compare": round(time.perf_counter() - t1, 1)})


def harmful_pairs(n: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """(goal, target) pairs of the bundled AdvBench behaviours ("Sure, here is ..."): harmful fine-tuning data that
    teaches compliance. `n` draws a seeded subset (in file order)."""
    import random

    from interp.data.prompts import dataset_path, read_behaviors

    rows = [(b.behavior, b.target) for b in read_behaviors(dataset_path("advbench")) if b.target]
    if n is None:
        return rows
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(rows):
        raise InterpError(f"n must be an integer in 1..{len(rows)}, got {n!r}")
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), n))]


@dataclass
class UpdateFineTunes:
    """The two fine-tunes of one instruct model that the update-space comparison reads."""

    useful: Path
    harmful: Path
    useful_run: "FineTune"
    harmful_run: "FineTune"

    def summary(self) -> dict:
        return {"useful": {k: v for k, v in self.useful_run.summary().items() if k != "losses"},
                "harmful": {k: v for k, v in self.harmful_run.summary().items() if k != "losses"}}


def make_update_fine_tunes(instruct: str | os.PathLike, useful: Sequence[tuple[str, str]],
                           harmful: Sequence[tuple[str, str]], out: str | os.PathLike,
                           options: "FineTuneOptions | None" = None) -> UpdateFineTunes:
    """Fine-tune `instruct` twice with the same `options` (default: two epochs, batch 8, lr 1e-4 and the reference's
    cosine schedule with a warm-up over 0.02 of the steps): on the `useful` (instruction, answer) pairs into
    `out/useful` and on the `harmful` pairs into `out/harmful` (both folders new or empty)."""
    from interp.steering.finetune import FineTuneOptions, fine_tune
    from interp.steering.orthogonalize import check_export_dir

    options = options or FineTuneOptions(epochs=2, batch_size=8, lr=1e-4, scheduler="cosine", warmup_ratio=0.02)
    options.check()
    out = Path(out)
    for part in ("useful", "harmful"):
        check_export_dir(out / part)
    runs = [fine_tune(instruct, pairs, out / part, options) for part, pairs in (("useful", useful), ("harmful", harmful))]
    return UpdateFineTunes(out / "useful", out / "harmful", runs[0], runs[1])


__all__ = ["ACTIVATION_SHARES", "OverlapConfig", "ActivationOverlap", "PairLayer", "energy_fit", "energy_subspace",
           "last_token_activations", "run", "compare", "Evaluation", "useful_loss", "evaluate", "WeightOverlap", "weights",
           "checkpoint_dir", "UpdateOverlap", "updates", "harmful_pairs", "UpdateFineTunes", "make_update_fine_tunes"]
