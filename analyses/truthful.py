"""Truthful directions: per-head probes and inference-time intervention (ITI) on TruthfulQA.

The method (Li, Patel, Viégas, Pfister and Wattenberg 2023, *Inference-Time Intervention: Eliciting Truthful
Answers from a Language Model*; reference code github.com/likenneth/honest_llama). Each TruthfulQA question comes
with true and false answers. Read every attention head's output (`attn.hook_z`, before the output projection) at
the last token of "Q: {question} A: {answer}", and fit one logistic probe per (layer, head) to tell true answers
from false ones. Heads whose probes do best on a validation split carry a linearly readable notion of truth;
take the top K. For each, the direction is the mass-mean shift (mean of true minus mean of false activations,
ITI's best variant) or the probe's weight, and sigma is the standard deviation of the training activations along
it. At inference, add alpha * sigma * direction to those heads' outputs (`HeadSteering`), where the reference
does (`positions="answer"`, the default): when scoring multiple choice, at the answer's tokens only (honest_llama
`legacy/llama_utils.py`, `tqa_run_probs`: one forward of question + answer, shifted from `start_edit_location`
on), and when generating, at the last token of each forward (the prompt's last token, then each new token:
`tqa_run_answers` with `start_edit_location='lt'`; its pyvene `ITI_Intervener` edits position -1 of every
forward). `positions="all"` shifts every position of every forward instead (instruction, primer, question and
answer), the form the reference's README calls "not exactly a one-to-one comparison".
Truthfulness is scored by TruthfulQA's multiple choice: MC1 (the best answer has the highest total
log-probability among it and the false ones) and MC2 (the normalised probability mass on the true answers).
The cost is measured as the reference measures it (`run_kl_wrt_orig`, `run_ce_loss`): over every position of a
held-out text with the heads shifted at every position (each token shifted as it would be were it generated),
the KL divergence of the steered next-token distribution from the plain one, and the cross-entropy of the
text's tokens, plain and steered.

What runs here, and how it departs from the reference (all in the Result's `departures`):
- Folds split by question, shuffled with `seed` (the reference cuts contiguous folds in the HF dataset's order).
  Everything fitted (probes, head ranking, directions, sigma, and the choice of K and alpha) sees the training
  folds only; the held-out fold only scores, with the intervention fitted without it. The validation split is
  20% of the training questions, as in the reference (`val_ratio`).
- Sigma comes from the training fold's "Q: A:" activations (the reference takes it from activations of every
  question, held-out ones included, in another prompt format).
- K and alpha: the reference fixes them by hand (K=48 of LLaMA-7B's 1024 heads, alpha=15). Here, unless given,
  they are chosen per fold on the grid `grid_heads` x `grid_alphas` by MC2 on `n_tune` validation questions of
  the training fold, among points whose KL on bundled harmless training prompts stays within `kl_budget`.
- Answers come from the bundled CSV's "Correct Answers" / "Incorrect Answers" (the reference's probing set uses
  the HF dataset's mc2 targets, drawn from the same annotations).
- Multiple choice scores every answer; the question, instruction and primer run once per question (shared
  prefix KV cache, `interp.core.likelihood`), unshifted under the default positions. The shift starts at the
  answer's first token. The reference sets `start_edit_location` to the question prompt's length + 4, its
  comment counting "\nA: " as four tokens; under LLaMA's tokenizer "\nA:" is three (the space joins the
  answer's first token, and its own scoring drops exactly three), so there the shift starts at the answer's
  second token. Either way the first answer token's log-probability, predicted from the prompt, is unshifted.
- The held-out text of the cost is chat-formatted bundled Alpaca instructions with the plain model's own greedy
  answers, every position counted (the reference: the first 128 tokens of OpenWebText texts, not bundled).
- The exported intervention (`final`) records the questions it was fitted on (its provenance's
  `fitted_questions`); `interp truthful eval` scores only the others by default.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from dataclasses import asdict, dataclass, field
from itertools import product
from typing import TYPE_CHECKING, Sequence

import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from interp.core.likelihood import continuations
from interp.core.progress import Checkpoint, Progress, digest, model_settings
from interp.core.result import Result
from interp.data.prompts import dataset
from interp.data.truthfulqa import Question, check_form, folds, mc_prompts, mc_scores, probe_prompts, read_questions
from interp.directions.plots import heatmap
from interp.errors import InterpError
from interp.steering.head_steering import HeadSteering
from probes.linear import LinearProbes

if TYPE_CHECKING:
    from interp.core.model import Model

DIRECTIONS = ("mass_mean", "probe")
METRICS = ("mc1", "mc2", "mc3")
POSITIONS = {"answer": "last", "all": "all"}  # TruthfulConfig.positions -> HeadSteering.positions


@dataclass
class TruthfulConfig:
    """Everything the run depends on; `TruthfulConfig()` is the reference's setting where the reference fixes one."""

    form: str = "qa"  # "qa" (the reference's prompts) or "chat" (the model's chat template)
    folds: int = 2
    seed: int = 0
    val_ratio: float = 0.2  # share of the training questions held out to rank the heads' probes
    direction: str = "mass_mean"  # or "probe": the probe's weight vector
    heads: int | None = None  # K; None: chosen on the grid
    alpha: float | None = None  # None: chosen on the grid
    grid_heads: tuple[int, ...] = (8, 16, 32)
    grid_alphas: tuple[float, ...] = (5.0, 15.0)
    n_tune: int = 16  # validation questions per fold scored at each grid point
    kl_budget: float = 0.5
    n_cost: int = 16  # harmless prompts for KL and CE
    cost_tokens: int = 32  # length of their reference answers
    n_examples: int = 4  # held-out questions answered with and without ITI
    C: float = 1.0  # inverse L2 strength of the probes (scikit-learn's default, as the reference)
    positions: str = "answer"  # "answer" (the reference's): the answer's tokens when scoring, the last token of each forward when generating; "all": every position

    def check(self, model: "Model", n_questions: int) -> None:
        check_form(self.form)
        if self.positions not in POSITIONS:
            raise InterpError(f"unknown positions {self.positions!r}; use 'answer' (the reference's: the answer's "
                              "tokens when scoring, the last token of each forward when generating) or 'all'")
        if self.direction not in DIRECTIONS:
            raise InterpError(f"unknown direction {self.direction!r}; use one of {', '.join(DIRECTIONS)}")
        total = model.n_layers * model.n_heads
        for k in ([self.heads] if self.heads is not None else list(self.grid_heads)):
            if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= total:
                raise InterpError(f"the number of heads K={k!r} must be between 1 and {total} "
                                  f"({model.n_layers} layers x {model.n_heads} heads)")
        if not (self.grid_alphas or self.alpha is not None) or not (self.grid_heads or self.heads is not None):
            raise InterpError("give --heads and --alpha, or non-empty grids to choose them from")
        if not 0 < self.val_ratio < 1:
            raise InterpError(f"val_ratio must be between 0 and 1, got {self.val_ratio!r}")
        if n_questions < 2 * self.folds:
            raise InterpError(f"{n_questions} questions are too few for {self.folds} folds; give at least {2 * self.folds}")


# ----- the steps -----

def head_activations(model: "Model", questions: Sequence[Question], form: str = "qa",
                     progress: bool | None = None) -> Float[Tensor, "pair layer head d_head"]:
    """`attn.hook_z` of every layer at the last token of every (question, answer) pair, in `Question.answers` order."""
    prompts, answers = probe_prompts(model, questions, form)
    got = continuations(model, prompts, answers, sites="attn.hook_z", logprobs=False, desc="head activations",
                        progress=progress)
    return torch.stack([got.acts[f"blocks.{layer}.attn.hook_z"] for layer in range(model.n_layers)], 1)


def mc_eval(model: "Model", questions: Sequence[Question], steering: HeadSteering | None = None,
            form: str = "qa", desc: str = "multiple choice", progress: bool | None = None) -> list[dict[str, float]]:
    """MC1/MC2/MC3 per question, with `steering` applied (None: the plain model): a "last" steering (the
    reference's positions) shifts the answers' tokens only, an "all" one every position of prompt and answer."""
    prompts, answers = mc_prompts(model, questions, form)
    if steering is not None and steering.positions == "last":
        got = continuations(model, prompts, answers, desc=desc, continuation_edits=[steering.at("all")],
                            progress=progress)
    else:
        with model.intervene(steering) if steering is not None else contextlib.nullcontext():
            got = continuations(model, prompts, answers, desc=desc, progress=progress)
    return mc_scores(questions, got.logprobs)


def mean_scores(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    return {m: sum(r[m] for r in rows) / len(rows) for m in METRICS}


@dataclass
class HeadFit:
    """Probes and directions for every head, fitted on one set of training questions."""

    accuracy: Float[Tensor, "layer head"]  # validation accuracy of each head's probe
    directions: Float[Tensor, "layer head d_head"]  # unit
    sigmas: Float[Tensor, "layer head"]
    provenance: dict

    @property
    def ranking(self) -> list[tuple[int, int]]:
        """Every (layer, head), best validation accuracy first (ties: lower layer, then lower head)."""
        n_heads = self.accuracy.shape[1]
        flat = self.accuracy.reshape(-1)
        order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))
        return [divmod(i, n_heads) for i in order]

    def steering(self, k: int, alpha: float, positions: str = "answer") -> HeadSteering:
        """The top-k heads shifted by alpha; `positions` as `TruthfulConfig.positions`."""
        heads = self.ranking[:k]
        index = torch.tensor(heads)
        return HeadSteering(heads, self.directions[index[:, 0], index[:, 1]], self.sigmas[index[:, 0], index[:, 1]],
                            alpha, {**self.provenance, "k": k, "alpha": alpha}, POSITIONS[positions])


def fit_heads(acts: Tensor, labels: Tensor, pair_question: Tensor, train: Sequence[int], val: Sequence[int],
              direction: str = "mass_mean", C: float = 1.0, provenance: dict | None = None) -> HeadFit:
    """Probes on the `train` questions' pairs, accuracy on the `val` questions' pairs; directions and sigma from
    both (the whole training fold, as the reference's `get_com_directions`)."""
    tr = torch.isin(pair_question, torch.tensor(list(train)))
    va = torch.isin(pair_question, torch.tensor(list(val)))
    probes = LinearProbes("logistic", C=C, max_iter=100).fit(acts[tr], labels[tr])
    accuracy = probes.score(acts[va], labels[va])
    fold = tr | va
    X, y = acts[fold], labels[fold].bool()
    if direction == "mass_mean":
        raw = X[y].mean(0) - X[~y].mean(0)
    else:
        raw = probes.coef_
    unit = raw / raw.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sigmas = torch.einsum("nlhd,lhd->nlh", X, unit).std(0)
    return HeadFit(accuracy, unit, sigmas, {"method": f"iti_{direction}", "n_train_questions": len(train),
                                              "n_val_questions": len(val), **(provenance or {})})


@dataclass
class Reference:
    """The held-out texts the capability cost is measured on: harmless instructions, chat-formatted, each followed
    by the plain model's own greedy answer."""

    texts: list[str]


@torch.no_grad()
def reference(model: "Model", prompts: Sequence[str], max_new_tokens: int) -> Reference:
    """The unsteered model's greedy answers (chat form) appended to their prompts."""
    generated = model.generate(prompts, max_new_tokens=max_new_tokens, chat=True, progress=False)
    answers = [a if a.strip() else "." for a in generated]
    return Reference([t + a for t, a in zip(model.prepare_prompts(prompts, chat=True), answers)])


@torch.no_grad()
def cost(model: "Model", steering: HeadSteering, ref: Reference, batch_size: int = 4) -> dict[str, float]:
    """The capability cost as the reference measures it (`run_kl_wrt_orig`, `run_ce_loss` with
    `start_edit_location=0`): the heads shifted at every position of each held-out text, whatever `steering`'s
    positions (every token shifted as it would be were it generated), and over every position the mean
    KL(plain || steered) of the next-token distribution; and the mean cross-entropy of the texts' tokens (all but
    the first), plain and steered."""
    everywhere = steering.at("all")
    kl, ce_plain, ce_steered, positions, tokens = 0.0, 0.0, 0.0, 0, 0
    for s in range(0, len(ref.texts), batch_size):
        chunk = list(ref.texts[s:s + batch_size])
        plain = model.logits(chunk, chat=False, last_only=False, batch_size=batch_size)
        with model.intervene(everywhere):
            steered = model.logits(chunk, chat=False, last_only=False, batch_size=batch_size)
        width = plain.shape[1]
        for r, row in enumerate(model.encode(chunk)):
            p = plain[r, width - len(row):].log_softmax(-1)  # left-padded: the row's tokens are its last columns
            q = steered[r, width - len(row):].log_softmax(-1)
            target = torch.tensor(row[1:])[:, None]
            kl += float((p.exp() * (p - q)).sum())
            ce_plain -= float(p[:-1].gather(-1, target).sum())
            ce_steered -= float(q[:-1].gather(-1, target).sum())
            positions, tokens = positions + len(row), tokens + len(row) - 1
    if not tokens:
        raise InterpError("the held-out texts have no tokens to measure the cost on")
    return {"kl": kl / positions, "ce_baseline": ce_plain / tokens, "ce_iti": ce_steered / tokens, "tokens": positions}


def _choose(grid: list[dict], budget: float) -> tuple[dict, str]:
    ok = [g for g in grid if g["kl"] <= budget]
    if ok:
        return max(ok, key=lambda g: (g["mc2"], -g["kl"])), f"best validation MC2 with KL <= {budget}"
    return min(grid, key=lambda g: g["kl"]), f"no grid point kept KL <= {budget}: the lowest-KL point"


def fitted_questions(steering: HeadSteering) -> set[str] | None:
    """The questions `steering` was fitted on (its provenance's `fitted_questions`, as `run` records them); None
    where it does not record them."""
    got = steering.provenance.get("fitted_questions")
    return set(got) if isinstance(got, list) else None


def answer_text(text: str) -> str:
    """A generated answer up to the next question, as the reference cuts them."""
    return text.split("\n\nQ:")[0].split("\nQ:")[0].strip()


# ----- the whole analysis -----

@dataclass
class FoldResult:
    fold: int
    test: list[int]
    n_train: int
    n_val: int
    k: int
    alpha: float
    selected_by: str
    grid: list[dict]
    top_heads: list[tuple[int, int]]
    accuracy: Tensor
    baseline: dict[str, float]
    iti: dict[str, float]
    cost: dict[str, float]
    steering: HeadSteering

    def to_json(self) -> dict:
        return {"fold": self.fold, "n_test": len(self.test), "n_train": self.n_train, "n_val": self.n_val,
                "heads": self.k, "alpha": self.alpha, "selected_by": self.selected_by, "grid": self.grid,
                "top_heads": [list(h) for h in self.top_heads], "best_probe_accuracy": round(float(self.accuracy.max()), 4),
                "test": {m: {"baseline": round(self.baseline[m], 4), "iti": round(self.iti[m], 4)} for m in METRICS},
                "cost": {k: round(v, 5) if isinstance(v, float) else v for k, v in self.cost.items()}}


@dataclass
class TruthfulResult(Result):
    title = "Truthful directions (ITI)"
    model: str
    options: TruthfulConfig
    n_questions: int
    folds: list[FoldResult]
    baseline: list[dict[str, float]]  # per question
    iti: list[dict[str, float]]  # per question, each from its held-out fold
    final: HeadSteering  # fitted on every question, with the K and alpha best across folds
    final_choice: dict
    examples: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    activations: Tensor | None = field(default=None, repr=False)  # [pair, layer, head, d_head], not saved
    labels: Tensor | None = field(default=None, repr=False)  # [pair] 1 = true answer
    pair_question: Tensor | None = field(default=None, repr=False)  # [pair] question index

    def summary(self) -> dict:
        base, iti = mean_scores(self.baseline), mean_scores(self.iti)
        kl = sum(f.cost["kl"] for f in self.folds) / len(self.folds)
        ce_b = sum(f.cost["ce_baseline"] for f in self.folds) / len(self.folds)
        ce_i = sum(f.cost["ce_iti"] for f in self.folds) / len(self.folds)
        return {
            "method": "ITI (Li et al. 2023): per-head probes, top-K heads shifted by alpha * sigma * direction",
            "model": self.model, "n_questions": self.n_questions, "options": asdict(self.options),
            "fitted_on": "training folds only (probes, ranking, directions, sigma, K and alpha); held-out folds only score",
            **{m: {"baseline": round(base[m], 4), "iti": round(iti[m], 4), "gain": round(iti[m] - base[m], 4)} for m in METRICS},
            "kl": round(kl, 5), "ce": {"baseline": round(ce_b, 5), "iti": round(ce_i, 5)},
            "folds": [f.to_json() for f in self.folds],
            "final": self.final_choice,
            "positions": (("answer: multiple choice shifts the answer's tokens only, generation the last token of "
                           "each forward (the reference's)") if self.options.positions == "answer" else
                          "all: every position of every forward (the reference shifts only the answer's tokens when "
                          "scoring and the last token of each forward when generating)"),
            "departures": [
                "folds shuffled with the seed (reference: contiguous folds in HF order)",
                "sigma from the training fold's Q/A activations (reference: every question, other prompt format)",
                "K and alpha chosen per fold on training-fold validation questions (reference: fixed by hand)"
                if self.options.heads is None or self.options.alpha is None else "K and alpha given",
                "cost over every position of chat-formatted bundled Alpaca instructions with the plain model's greedy "
                "answers, shifted at every position (reference: the same measure on OpenWebText)",
                "multiple choice shifted from the answer's first token (reference: start_edit_location = prompt + 4 "
                "tokens, the answer's second token under LLaMA's tokenizer)" if self.options.positions == "answer" else
                "every position shifted, instruction, primer and question included (reference: answer tokens when "
                "scoring, the last token of each forward when generating)",
            ],
            "examples": self.examples,
            "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
        }

    def figures(self) -> dict[str, go.Figure]:
        acc = self.folds[0].accuracy
        figs = {"probe_accuracy": heatmap(acc.T, range(acc.shape[0]), range(acc.shape[1]),
                                          "Validation accuracy of each head's truth probe (fold 0)", "layer", "head",
                                          colorscale="Viridis")}
        for metric in ("mc2", "mc1"):
            figs[f"grid_{metric}"] = self._grid_figure(metric)
        base, iti = mean_scores(self.baseline), mean_scores(self.iti)
        figs["mc"] = go.Figure([go.Bar(x=list(METRICS), y=[base[m] for m in METRICS], name="baseline"),
                                go.Bar(x=list(METRICS), y=[iti[m] for m in METRICS], name="ITI")])
        figs["mc"].update_layout(title=f"TruthfulQA multiple choice on held-out folds ({self.n_questions} questions)",
                                 barmode="group", yaxis_title="score")
        if self.examples:
            figs["examples"] = go.Figure(go.Table(
                header=dict(values=["question", "baseline", "ITI"]),
                cells=dict(values=[[e["question"] for e in self.examples], [e["baseline"] for e in self.examples],
                                   [e["iti"] for e in self.examples]])))
            figs["examples"].update_layout(title="Greedy answers with and without ITI (held-out questions, fold 0)")
        return figs

    def _grid_figure(self, metric: str) -> go.Figure:
        """Validation `metric` against KL for every grid point, one line per fold and alpha (points labelled by K)."""
        fig = go.Figure()
        for f in self.folds:
            for alpha in sorted({g["alpha"] for g in f.grid}):
                pts = sorted((g for g in f.grid if g["alpha"] == alpha), key=lambda g: g["k"])
                fig.add_trace(go.Scatter(x=[g["kl"] for g in pts], y=[g[metric] for g in pts], mode="lines+markers+text",
                                         text=[f"K={g['k']}" for g in pts], textposition="top center",
                                         name=f"fold {f.fold}, alpha={alpha:g}"))
            if f.grid:
                fig.add_trace(go.Scatter(x=[0.0], y=[f.grid[0][f"{metric}_baseline"]], mode="markers",
                                         marker=dict(symbol="x", size=10), name=f"fold {f.fold}, no ITI"))
        fig.update_layout(title=f"Validation {metric.upper()} against KL over the K x alpha grid",
                          xaxis_title="KL on harmless training prompts", yaxis_title=f"{metric.upper()} (validation questions)")
        return fig

    def save_artifacts(self, directory) -> None:
        self.final.save(directory)  # head_steering.safetensors + .json: `interp truthful eval --intervention DIR`


def _split(train: list[int], ratio: float, seed: int) -> tuple[list[int], list[int]]:
    order = list(train)
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(order) * ratio))
    return sorted(order[n_val:]), order[:n_val]


CHUNK = 64  # questions per recorded unit of the capture and the multiple choice (a multiple of the prefix groups)


def run(model: "Model", data: Sequence[Question] | None = None, config: TruthfulConfig | None = None,
        checkpoint: str | os.PathLike | Checkpoint | None = None) -> TruthfulResult:
    """ITI end to end on the questions `data` (default: the bundled TruthfulQA) with `config.folds`-fold
    cross-validation by question; see the module docstring.

    `checkpoint`: a folder where the run records its finished units as it goes (`interp.core.progress`): the
    capture and the multiple choice in chunks of `CHUNK` questions, the reference answers, and per fold its fit,
    each grid point, its held-out scores and its cost. A rerun with the same folder and settings resumes there
    and returns the Result an uninterrupted run returns; other settings are refused."""
    options = config or TruthfulConfig()
    questions = list(data) if data is not None else read_questions()
    options.check(model, len(questions))
    progress = Progress.open(checkpoint, "truthful", {"config": asdict(options), "model": model_settings(model),
                                                      "questions": digest(questions)})
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    acts = torch.cat([c["acts"] for c in progress.chunks(
        "capture", questions, CHUNK, lambda qs: {"acts": head_activations(model, qs, options.form, progress=False)},
        desc="head activations", unit="question")])
    labels = torch.tensor([lab for q in questions for lab in q.labels])
    pair_question = torch.tensor([i for i, q in enumerate(questions) for _ in q.answers])
    seconds["capture"] = time.perf_counter() - t
    t = time.perf_counter()
    baseline = _mc_chunks(progress, "mc_baseline", model, questions, None, options.form, "MC baseline")
    seconds["mc_baseline"] = time.perf_counter() - t
    t = time.perf_counter()

    def references() -> dict[str, list[str]]:
        tune_prompts = dataset("harmless_train", n=options.n_cost, seed=options.seed)
        cost_prompts = dataset("harmless_val", n=options.n_cost, seed=options.seed)
        return {"tune": reference(model, tune_prompts, options.cost_tokens).texts,
                "cost": reference(model, cost_prompts, options.cost_tokens).texts}

    refs = progress.unit("reference_answers", references)
    tune_ref, cost_ref = Reference(refs["tune"]), Reference(refs["cost"])
    seconds["reference_answers"] = time.perf_counter() - t
    ks = [options.heads] if options.heads is not None else list(options.grid_heads)
    alphas = [options.alpha] if options.alpha is not None else list(options.grid_alphas)
    provenance = {"model": model.fingerprint, "form": options.form, "seed": options.seed,
                  "positions": options.positions}
    results: list[FoldResult] = []
    held_out: dict[int, dict[str, float]] = {}  # question -> its scores in the fold that holds it out
    t = time.perf_counter()
    for f, test in enumerate(folds(len(questions), options.folds, options.seed)):
        held = set(test)
        train, val = _split([i for i in range(len(questions)) if i not in held], options.val_ratio, options.seed + f)
        fit = _fit_unit(progress, f"fold {f}/fit", acts, labels, pair_question, train, val, options,
                        {**provenance, "fold": f, "fitted_questions": [questions[i].question for i in sorted(train + val)]})
        grid: list[dict] = []
        tune = val[:options.n_tune]
        base_tune = mean_scores([baseline[i] for i in tune])

        def grid_point(k: int, alpha: float) -> dict:
            steer = fit.steering(k, alpha, options.positions)
            scores = mean_scores(mc_eval(model, [questions[i] for i in tune], steer, options.form, desc=f"grid K={k} a={alpha:g}"))
            c = cost(model, steer, tune_ref) if len(ks) * len(alphas) > 1 else None
            return {"k": k, "alpha": alpha, **{m: round(scores[m], 4) for m in METRICS},
                    "kl": round(c["kl"], 5) if c else None,
                    "mc1_baseline": round(base_tune["mc1"], 4), "mc2_baseline": round(base_tune["mc2"], 4)}

        for k, alpha in product(ks, alphas):
            grid.append(progress.unit(f"fold {f}/grid K={k} alpha={alpha!r}", lambda: grid_point(k, alpha)))
        chosen, why = _choose(grid, options.kl_budget) if len(grid) > 1 else (grid[0], "given")
        steer = fit.steering(chosen["k"], chosen["alpha"], options.positions)
        held_scores = _mc_chunks(progress, f"fold {f}/test", model, [questions[i] for i in test], steer, options.form,
                                 f"MC fold {f}")
        for i, s in zip(test, held_scores):
            held_out[i] = s
        fold_cost = progress.unit(f"fold {f}/cost", lambda: cost(model, steer, cost_ref))
        results.append(FoldResult(f, test, len(train), len(val), chosen["k"], chosen["alpha"], why, grid,
                                  fit.ranking[:chosen["k"]], fit.accuracy, mean_scores([baseline[i] for i in test]),
                                  mean_scores(held_scores), fold_cost, steer))
    seconds["folds"] = time.perf_counter() - t
    iti = [held_out[i] for i in range(len(questions))]  # the folds cover every question
    final_k, final_alpha, why = _final_choice(results, ks, alphas, options.kl_budget)
    train_all, val_all = _split(list(range(len(questions))), options.val_ratio, options.seed + options.folds)
    final_fit = _fit_unit(progress, "final/fit", acts, labels, pair_question, train_all, val_all, options,
                          {**provenance, "fitted_questions": [q.question for q in questions]})
    final = final_fit.steering(final_k, final_alpha, options.positions)
    t = time.perf_counter()
    examples = progress.unit("examples", lambda: _examples(model, questions, results[0], options)) if options.n_examples else []
    seconds["examples"] = time.perf_counter() - t
    return TruthfulResult(model.name, options, len(questions), results, baseline, iti, final,
                          {"heads": final_k, "alpha": final_alpha, "selected_by": why,
                           "fitted_on": f"all {len(questions)} questions"}, examples, seconds, acts, labels, pair_question)


def _mc_chunks(progress: Progress, key: str, model: "Model", questions: Sequence[Question],
               steering: HeadSteering | None, form: str, desc: str) -> list[dict[str, float]]:
    """`mc_eval` of `questions` in recorded chunks of `CHUNK` questions (one progress bar over them)."""
    parts = progress.chunks(key, questions, CHUNK, lambda qs: mc_eval(model, qs, steering, form, desc, progress=False),
                            desc=desc, unit="question")
    return [s for part in parts for s in part]


def _fit_unit(progress: Progress, key: str, acts: Tensor, labels: Tensor, pair_question: Tensor, train: list[int],
              val: list[int], options: TruthfulConfig, provenance: dict) -> HeadFit:
    """`fit_heads`, recorded as one unit."""
    def fit() -> dict:
        got = fit_heads(acts, labels, pair_question, train, val, options.direction, options.C, provenance)
        return {"accuracy": got.accuracy, "directions": got.directions, "sigmas": got.sigmas,
                "provenance": got.provenance}

    return HeadFit(**progress.unit(key, fit))


def _final_choice(results: list[FoldResult], ks: list[int], alphas: list[float], budget: float) -> tuple[int, float, str]:
    if len(ks) * len(alphas) == 1:
        return ks[0], alphas[0], "given"
    pooled = []
    for k, alpha in product(ks, alphas):
        pts = [g for f in results for g in f.grid if g["k"] == k and g["alpha"] == alpha]
        pooled.append({"k": k, "alpha": alpha, "mc2": sum(g["mc2"] for g in pts) / len(pts),
                       "kl": sum(g["kl"] for g in pts) / len(pts)})
    chosen, why = _choose(pooled, budget)
    return chosen["k"], chosen["alpha"], why + " (validation scores averaged over folds)"


def _examples(model: "Model", questions: Sequence[Question], fold: FoldResult, options: TruthfulConfig,
              max_new_tokens: int = 40) -> list[dict]:
    """A few held-out questions of the fold answered greedily with and without its intervention."""
    qs = [questions[i] for i in fold.test[:options.n_examples]]
    prompts, _ = mc_prompts(model, qs, options.form)
    plain = model.generate(prompts, max_new_tokens=max_new_tokens, chat=False, progress=False)
    steered = model.generate(prompts, max_new_tokens=max_new_tokens, chat=False, interventions=[fold.steering], progress=False)
    return [{"question": q.question, "baseline": answer_text(b), "iti": answer_text(s)} for q, b, s in zip(qs, plain, steered)]
