"""Subspace patching with DAS and the interpretability-illusion checks: which low-dimensional subspace at a site
carries a task's clean/corrupted difference, and does it carry it the way the model uses it.

The method. DAS (Geiger et al. 2023; `interp.circuits.das`) learns a k-dimensional subspace at one site and positions by
interchange interventions: the corrupted run (base) gets the clean run's (source) component inside the subspace,
and the subspace is trained so that the patched run gives the clean answer. Makelov, Lange, Geiger and Nanda
(ICLR 2024, "Is This the Subspace You Are Looking For?") showed that such a subspace can work through a dormant
pathway: it moves the output although the feature it patches is never read there (`interp.circuits.illusion`). So every
subspace patched here comes with the paper's checks and a verdict.

What the Result holds, all on the held-out test items of one train / validation / test split:
- DAS's training curve (train and validation cross-entropy, validation recovery) and the subspace it kept;
- the logit-difference recovery (clean = 1, corrupted = 0; `interp.circuits.das.Interchange.recovery`) of the DAS subspace
  next to (a) patching the whole component, (b) the difference-in-means direction and (c) a logistic-probe
  direction, both fitted on the training items' activations at the site (class: clean run vs corrupted run), and
  (d) a random subspace of the same k;
- for each subspace: its split into the rowspace and the kernel of the weights reading the site, the variance of
  the activations along each part, the effects of each part patched alone, and a verdict ("consistent" or
  "possible illusion" with the numbers that triggered it).

Departures: the probe direction is the coefficient vector of an L2-regularised logistic regression
(`probes.linear.LinearProbes`, C = 1), the difference-in-means direction the normalised mean difference
(`interp.directions.estimators.DiffInMeans`); both are 1-dimensional whatever k is. `run_toy` does the same on the toy
networks of `interp.circuits.toy`, where the truth is known.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import plotly.graph_objects as go
import torch
from torch import Tensor

from interp.circuits import das as D
from interp.circuits.illusion import Diagnosis, diagnose, reader_weight, rowspace
from interp.circuits.tasks import TaskSet, solvable
from interp.circuits.toy import make_toy, toy_interchange
from interp.core.interventions import site_width
from interp.core.result import Result
from interp.core.subspace import Subspace
from interp.directions.estimators import DiffInMeans
from interp.errors import InterpError
from probes.linear import LinearProbes

if TYPE_CHECKING:
    from pathlib import Path

    from interp.core.model import Model

LABELS = {"das": "DAS", "full": "whole component", "diff_in_means": "difference in means", "probe": "logistic probe",
          "random": "random subspace"}


@dataclass
class SubspaceResult(Result):
    """DAS at one site, the baselines, and the illusion diagnostics of every subspace patched (module docstring)."""

    model: str
    task: str
    site: str
    positions: list[int]
    k: int
    fit: D.DASFit
    recoveries: dict[str, float]
    diagnoses: dict[str, Diagnosis]
    subspaces: dict[str, Subspace]
    clean_logit_diff: float
    corrupted_logit_diff: float
    timings: dict[str, float] = field(default_factory=dict)
    title: str = "Subspace patching: DAS and the illusion checks"

    def __repr__(self) -> str:
        rec = ", ".join(f"{name}={v:.3f}" for name, v in self.recoveries.items())
        return (f"SubspaceResult({self.model!r}, site={self.site!r}, k={self.k}, recovery: {rec}; "
                f"verdicts {self.verdicts})")

    @property
    def subspace(self) -> Subspace:
        """The DAS subspace."""
        return self.fit.subspace

    @property
    def verdicts(self) -> dict[str, str]:
        return {name: d.verdict for name, d in self.diagnoses.items()}

    def summary(self) -> dict:
        split = self.fit.split
        return {"model": self.model, "task": self.task, "site": self.site, "positions": self.positions, "k": self.k,
                "n_items": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
                "convention": "base = corrupted run, source = clean run, counterfactual answer = the clean answer; "
                              "recovery = normalised logit difference on the test items (clean 1, corrupted 0)",
                "clean_logit_diff": self.clean_logit_diff, "corrupted_logit_diff": self.corrupted_logit_diff,
                "recovery": self.recoveries, "verdicts": self.verdicts,
                "diagnostics": {name: d.to_json() for name, d in self.diagnoses.items()},
                "das": self.fit.to_json(), "timings_s": self.timings}

    def figures(self) -> dict[str, go.Figure]:
        return {"training": self._training(), "recoveries": self._recoveries(), "split": self._split(),
                "effects": self._effects()}

    def save_artifacts(self, directory: "Path") -> None:
        """The DAS subspace (subspace.safetensors + subspace.json) beside the result."""
        self.subspace.save(directory)

    def _training(self) -> go.Figure:
        c = self.fit.curves
        epochs = list(range(1, len(c["train_loss"]) + 1))
        fig = go.Figure([go.Scatter(x=epochs, y=c["train_loss"], name="train cross-entropy"),
                         go.Scatter(x=epochs, y=c["val_loss"], name="validation cross-entropy"),
                         go.Scatter(x=epochs, y=c["val_recovery"], name="validation recovery", yaxis="y2")])
        fig.add_vline(x=self.fit.best_epoch + 1, line_dash="dot", annotation_text="kept")
        fig.update_layout(title=f"DAS at {self.site} (k={self.k})", xaxis_title="epoch", yaxis_title="cross-entropy",
                          yaxis2=dict(title="recovery", overlaying="y", side="right"))
        return fig

    def _recoveries(self) -> go.Figure:
        names = list(self.recoveries)
        colour = ["firebrick" if name in self.diagnoses and self.diagnoses[name].illusion else "steelblue"
                  for name in names]
        fig = go.Figure(go.Bar(x=[LABELS.get(n, n) for n in names], y=[self.recoveries[n] for n in names],
                               marker_color=colour, text=[self.diagnoses[n].verdict if n in self.diagnoses else ""
                                                          for n in names]))
        fig.update_layout(title=f"test recovery at {self.site} (red: possible illusion)", yaxis_title="recovery")
        return fig

    def _split(self) -> go.Figure:
        names = list(self.diagnoses)
        x = [LABELS.get(n, n) for n in names]
        fig = go.Figure([go.Bar(x=x, y=[self.diagnoses[n].null_norm_share for n in names],
                                name="kernel share of the norm"),
                         go.Bar(x=x, y=[self.diagnoses[n].null_variance_share for n in names],
                                name="kernel share of the variance")])
        fig.update_layout(title=f"rowspace / nullspace split of the reader at {self.site}", barmode="group",
                          yaxis_title="share in the reader's kernel")
        return fig

    def _effects(self) -> go.Figure:
        names = list(self.diagnoses)
        x = [LABELS.get(n, n) for n in names]
        fig = go.Figure([go.Bar(x=x, y=[self.diagnoses[n].effect[part] for n in names], name=part)
                         for part in ("whole", "rowspace", "nullspace")])
        fig.add_hline(y=self.recoveries["full"], line_dash="dot", annotation_text="whole component")
        fig.update_layout(title="recovery of each subspace, its rowspace part and its nullspace part", barmode="group",
                          yaxis_title="recovery")
        return fig


def baselines(problem: D.Interchange, train: Sequence[int], k: int, seed: int = 0) -> dict[str, Subspace]:
    """The difference-in-means and logistic-probe directions of clean vs corrupted activations at the site on the
    training items, and a random k-dimensional subspace (seeded)."""
    d = problem.width
    X = torch.cat([problem.source[list(train)], problem.base[list(train)]]).reshape(-1, d)
    y = torch.cat([torch.ones(len(X) // 2), torch.zeros(len(X) // 2)])
    provenance = {**problem.provenance, "items": "train"}
    dim = DiffInMeans(provenance={**provenance, "method": "diff_in_means"}).fit(X, y).direction_
    probe = LinearProbes("logistic", provenance=provenance).fit(X, y)
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=gen))
    return {"diff_in_means": dim,
            "probe": Subspace(probe.coef_[None], {**provenance, "method": "logistic_probe"}),
            "random": Subspace(q.T, {**provenance, "method": "random", "seed": seed, "k": k})}


def compare(problem: D.Interchange, reader: Tensor | None, k: int = 1, seed: int = 0, name: str = "",
            task: str = "", **train_options) -> SubspaceResult:
    """DAS on `problem`, the baselines, their test recoveries and the diagnostics of each (module docstring).
    reader: the weights reading the site (`interp.circuits.illusion.reader_weight`), None for the residual stream."""
    start = time.perf_counter()
    fit = D.train(problem, k, seed=seed, **train_options)
    test = fit.split.test
    subspaces = {"das": fit.subspace, **baselines(problem, fit.split.train, k, seed)}
    full = problem.recovery(test, None)
    rows = None if reader is None else rowspace(reader)  # once for every subspace
    diagnoses = {key: diagnose(problem, s, reader, test, key, full=full, rows=rows) for key, s in subspaces.items()}
    recoveries = {"das": diagnoses["das"].effect["whole"], "full": full,
                  **{key: diagnoses[key].effect["whole"] for key in ("diff_in_means", "probe", "random")}}
    index = torch.tensor(test)
    prov = problem.provenance
    return SubspaceResult(name or str(prov.get("model", {}).get("name", "")), task or str(prov.get("task", "")),
                          problem.site, list(prov.get("positions", [])), k, fit, recoveries, diagnoses, subspaces,
                          float(problem.source_ld[index].mean()), float(problem.base_ld[index].mean()),
                          {"das_train": fit.train_s, "total": time.perf_counter() - start})


@dataclass
class SubspacesConfig:
    """Everything DAS (`run`) depends on besides the model and the task; `site` has no default."""

    site: str  # blocks.L.hook_resid_post | blocks.L.hook_resid_pre | blocks.L.mlp.hook_post | blocks.L.attn.hook_z
    k: int = 1  # dimension of the learned subspace
    positions: tuple[int, ...] = (-1,)  # patched positions counted from the end
    seed: int = 0  # seed of the split, DAS and the random baseline
    min_solve_rate: float = 0.5  # refuse a task the model solves less often than this
    batch_size: int = 32  # items per forward
    epochs: int = 40  # at most this many epochs (the best validation epoch is kept)
    lr: float = 1e-2  # Adam learning rate
    patience: int = 5  # stop after this many epochs without a better validation loss
    progress: bool | None = None  # progress bar (None: when run interactively)


def run(model: "Model", data: TaskSet, config: SubspacesConfig | None = None) -> SubspaceResult:
    """DAS at `config.site` and `config.positions` on the items of the task `data` that `model` solves, with the
    baselines and the illusion diagnostics (module docstring)."""
    if config is None:
        raise InterpError("DAS needs a site: give a SubspacesConfig(site='blocks.L.hook_resid_post', ...)")
    cfg = config
    site, k, positions, seed = cfg.site, cfg.k, list(cfg.positions), cfg.seed
    train_options = dict(epochs=cfg.epochs, lr=cfg.lr, patience=cfg.patience, progress=cfg.progress)
    task = data
    start = time.perf_counter()
    (s,) = model.sites(site)
    D.check_k(k, site_width(model, s), s.name)  # before any forward
    kept = solvable(model, task, cfg.min_solve_rate)
    problem = D.interchange(model, kept, s.name, positions, batch_size=cfg.batch_size)
    prepare = time.perf_counter() - start
    result = compare(problem, reader_weight(model, s.name), k, seed, model.name, task.name, **train_options)
    result.timings.update(prepare=prepare, total=time.perf_counter() - start)
    return result


def run_toy(kind: str = "illusion", n: int = 64, k: int = 1, seed: int = 0, epochs: int = 100, lr: float = 0.1,
            patience: int = 15, batch_size: int = 8, **train_options) -> SubspaceResult:
    """The same on a toy network of `interp.circuits.toy` ("illusion" or "faithful"), whose hidden layer is the site."""
    toy = make_toy(kind)
    problem = toy_interchange(toy, n, seed)
    problem.batch_size = batch_size
    train_options.setdefault("progress", False)
    return compare(problem, toy.W_out, k, seed, toy.name, "toy", epochs=epochs, lr=lr, patience=patience,
                   **train_options)
