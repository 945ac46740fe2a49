"""Subspace patching with DAS and the interpretability-illusion checks: which low-dimensional subspace at a site
carries a task's clean/corrupted difference, and does it carry it the way the model uses it.

The method. DAS (Geiger et al. 2023; `interp.circuits.das`) learns a k-dimensional subspace at one site and positions by
interchange interventions: the corrupted run (base) gets the clean run's (source) component inside the subspace,
and the subspace is trained so that the patched run gives the clean answer. Makelov, Lange, Geiger and Nanda
(ICLR 2024, "Is This the Subspace You Are Looking For?") showed that such a subspace can work through a dormant
pathway: it moves the output although the feature it patches is never read there (`interp.circuits.illusion`). So every
subspace patched here comes with the paper's checks and a verdict.

The data (Makelov et al.'s reference code: github.com/amakelov/activation-patching-illusion, `data_utils.py`,
`ioi_interventions.ipynb`). By default (`split="disjoint"`) the test items come from their own names, objects,
places and templates (`interp.circuits.tasks.make_task(..., test=0.25)`, or a pairs file whose lines say `part`);
the validation items are drawn from the training part. On IOI, `interp das` trains on the reference's pairs of
the position variable (`corrupt="position"`): both directions of the change and the pairs whose label is kept,
and tests on the label-changing ones. `split="random"` (a random split of one set of items, the old behaviour)
and the one-way pairs (`corrupt="swap"`, `"abc"`) are named options; the Result lists every departure from the
reference that the options in force make (`departures`).

The readers. At an MLP's hidden layer the reader is its output projection. At the residual stream the reference
decomposes a DAS direction against the W_Q of the heads that read it downstream (the name movers in IOI); here the
readers are the heads the config names (`readers`, "L.H"), else the `n_readers` top heads of a heads patching
sweep given in `SubspacesData.sweep` (of the layers that read the site), else none, and then only the "beyond the
component" rule can fire. The thresholds of the verdict come from the config (fixed before the run, never from
the items it judges); the Result records them, whether each is the default, and everything that was chosen from
data before the run and on which items (`SubspacesData.choices`).

What the Result holds, all on the held-out test items of one train / validation / test split:
- DAS's training curve (train and validation cross-entropy, validation recovery) and the subspace it kept;
- the logit-difference recovery (clean = 1, corrupted = 0; `interp.circuits.das.Interchange.recovery`) of the DAS subspace
  next to (a) patching the whole component, (b) the difference-in-means direction and (c) a logistic-probe
  direction, both fitted on the training items' activations at the site (class: clean run vs corrupted run), and
  (d) a random subspace of the same k;
- for each subspace: its split into the rowspace and the kernel of the weights reading the site, the variance of
  the activations along each part, the effects of each part patched alone, and a verdict ("consistent" or
  "possible illusion" with the numbers that triggered it);
- the interchange accuracy of each (the share of patched runs whose top token is the counterfactual answer), over
  all test items and per kind of pair.
Recovery is measured on the items whose label changes (`interp.circuits.das.Interchange.recovery`).

Departures: the probe direction is the coefficient vector of an L2-regularised logistic regression
(`probes.linear.LinearProbes`, C = 1), the difference-in-means direction the normalised mean difference
(`interp.directions.estimators.DiffInMeans`); both are 1-dimensional whatever k is, and both separate the two
values of the variable (ABB vs BAB on the position pairs, as the reference's mean difference; clean vs corrupted
run on the other tasks) on the training items' activations. `run_toy` does the same on the toy
networks of `interp.circuits.toy`, where the truth is known.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import plotly.graph_objects as go
import torch
from torch import Tensor

from interp.circuits import das as D
from interp.circuits.illusion import (
    Diagnosis,
    Thresholds,
    describe_reader,
    diagnose,
    parse_heads,
    reader_weight,
    rowspace,
)
from interp.circuits.tasks import TaskSet, solvable
from interp.circuits.toy import make_toy, toy_interchange
from interp.core.interventions import site_width
from interp.core.result import Result
from interp.core.subspace import Subspace
from interp.directions.estimators import DiffInMeans
from interp.errors import InterpError
from probes.linear import LinearProbes

if TYPE_CHECKING:
    from analyses.patching import PatchingResult
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
    accuracy: dict[str, dict[str, float | None]] = field(default_factory=dict)  # interchange accuracy per subspace
    options: dict[str, Any] = field(default_factory=dict)  # the data and split options in force
    departures: list[str] = field(default_factory=list)  # from the reference, made by those options
    thresholds: dict[str, dict] = field(default_factory=dict)  # each: value and how it was fixed
    readers: dict[str, Any] = field(default_factory=dict)  # the weights the site was decomposed against
    chosen_from_data: dict[str, str] = field(default_factory=dict)  # what was chosen from data, on which items
    pair_kinds: dict[str, dict[str, int]] = field(default_factory=dict)  # per split part: changing / kept items

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
                "split": split.how, "pair_kinds": self.pair_kinds,
                "convention": "base = corrupted run, source = clean run, counterfactual answer = the item's answer; "
                              "recovery = normalised logit difference on the test items whose label changes "
                              "(target run 1, corrupted run 0); interchange accuracy = share of patched runs whose "
                              "top token is the counterfactual answer",
                "clean_logit_diff": self.clean_logit_diff, "corrupted_logit_diff": self.corrupted_logit_diff,
                "recovery": self.recoveries, "interchange_accuracy": self.accuracy, "verdicts": self.verdicts,
                "diagnostics": {name: d.to_json() for name, d in self.diagnoses.items()},
                "readers": self.readers, "thresholds": self.thresholds, "chosen_from_data": self.chosen_from_data,
                "options": self.options, "departures": self.departures,
                "das": self.fit.to_json(), "timings_s": self.timings}

    def figures(self) -> dict[str, go.Figure]:
        return {"training": self._training(), "recoveries": self._recoveries(), "split": self._split(),
                "effects": self._effects()}

    def save_artifacts(self, directory: Path) -> None:
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
    """The difference-in-means and logistic-probe directions separating the two values of the variable
    (`Interchange.labels`: clean vs corrupted run by default) on the training items' activations at the site, and a
    random k-dimensional subspace (seeded)."""
    d = problem.width
    index = list(train)
    X = torch.cat([problem.source[index], problem.base[index]])  # [2 * train, positions, d]
    assert problem.labels is not None  # set in Interchange.__post_init__
    y = torch.cat([problem.labels[index, 0], problem.labels[index, 1]]).float()
    positions = X.shape[1]
    X, y = X.reshape(-1, d), y.repeat_interleave(positions)
    if len(set(y.tolist())) < 2:
        raise InterpError("the training items hold one value of the variable only; the baselines need both")
    provenance = {**problem.provenance, "items": "train"}
    dim = DiffInMeans(provenance={**provenance, "method": "diff_in_means"}).fit(X, y).direction_
    probe = LinearProbes("logistic", provenance=provenance).fit(X, y)
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=gen))
    return {"diff_in_means": dim,
            "probe": Subspace(probe.coef_[None], {**provenance, "method": "logistic_probe"}),
            "random": Subspace(q.T, {**provenance, "method": "random", "seed": seed, "k": k})}


def compare(problem: D.Interchange, reader: Tensor | None, k: int = 1, seed: int = 0, name: str = "",
            task: str = "", split: D.Split | None = None, thresholds: Thresholds | None = None,
            reader_note: str = "", rule: str = "dormant pathway", **train_options) -> SubspaceResult:
    """DAS on `problem`, the baselines, their test recoveries and the diagnostics of each (module docstring).
    reader: the weights reading the site (`interp.circuits.illusion.reader_weight`), None for the whole residual
    stream. split: the items' split (default: `interp.circuits.das.train`'s); thresholds: the verdict's, fixed
    before the run (default `Thresholds()`)."""
    start = time.perf_counter()
    thresholds = thresholds or Thresholds()
    fit = D.train(problem, k, split=split, seed=seed, **train_options)
    test = fit.split.test
    subspaces = {"das": fit.subspace, **baselines(problem, fit.split.train, k, seed)}
    full = problem.recovery(test, None)
    rows = None if reader is None else rowspace(reader)  # once for every subspace
    diagnoses = {key: diagnose(problem, s, reader, test, key, full=full, rows=rows, thresholds=thresholds,
                               reader_note=reader_note, rule=rule) for key, s in subspaces.items()}
    recoveries = {"das": diagnoses["das"].effect["whole"], "full": full,
                  **{key: diagnoses[key].effect["whole"] for key in ("diff_in_means", "probe", "random")}}
    accuracy = {key: problem.accuracy(test, None if key == "full" else subspaces[key].basis) for key in recoveries}
    assert problem.changes is not None and problem.target_ld is not None  # set in Interchange.__post_init__
    changing = problem.changing(test)
    index = torch.tensor(changing)
    prov = problem.provenance
    kinds = {part: {"changing": sum(bool(problem.changes[i]) for i in items),
                    "kept": sum(not bool(problem.changes[i]) for i in items)}
             for part, items in (("train", fit.split.train), ("val", fit.split.val), ("test", test))}
    return SubspaceResult(name or str(prov.get("model", {}).get("name", "")), task or str(prov.get("task", "")),
                          problem.site, list(prov.get("positions", [])), k, fit, recoveries, diagnoses, subspaces,
                          float(problem.target_ld[index].mean()), float(problem.base_ld[index].mean()),
                          {"das_train": fit.train_s, "total": time.perf_counter() - start}, accuracy=accuracy,
                          thresholds={key: {"value": v, "fixed": "before the run"}
                                      for key, v in thresholds.to_json().items()},
                          readers={"description": reader_note or ("the site's reader" if reader is not None
                                                                  else "none: full rank"),
                                   "rank": 0 if rows is None else int(rows.shape[0])},
                          pair_kinds=kinds)


SPLITS = ("disjoint", "random")


@dataclass
class SubspacesConfig:
    """Everything DAS (`run`) depends on besides the model and the task; `site` has no default. The threshold fields
    are the verdict's (`interp.circuits.illusion.Thresholds`, whose defaults they repeat), fixed before the run."""

    site: str  # blocks.L.hook_resid_post | blocks.L.hook_resid_pre | blocks.L.mlp.hook_post
    k: int = 1  # dimension of the learned subspace
    positions: tuple[int, ...] = (-1,)  # patched positions counted from the end
    seed: int = 0  # seed of the split, DAS and the random baseline
    split: str = "disjoint"  # disjoint (test items from their own vocabulary: the task's parts) | random (old)
    readers: tuple[str, ...] = ()  # heads LAYER.HEAD whose weights read a residual site (default: a sweep's top heads)
    reader_weights: tuple[str, ...] = ("Q",)  # which weights of the reader heads: Q | K | V
    n_readers: int = 3  # top heads taken from a patching sweep (SubspacesData.sweep) when no readers are named
    min_solve_rate: float = 0.5  # refuse a task the model solves less often than this
    batch_size: int = 32  # items per forward
    epochs: int = 40  # at most this many epochs (the best validation epoch is kept)
    lr: float = 1e-2  # Adam learning rate
    patience: int = 5  # stop after this many epochs without a better validation loss
    moves: float = 0.1  # verdict: a subspace moves the output when it restores at least this much
    null_share: float = 0.5  # verdict: above this share of its patched variance in the readers' kernel
    needs_null: float = 0.5  # verdict: above this share of the whole effect missing without the kernel part
    excess: float = 0.2  # verdict: restoring this much more than the whole component is suspect
    progress: bool | None = None  # progress bar (None: when run interactively)

    def thresholds(self) -> Thresholds:
        return Thresholds(self.moves, self.null_share, self.needs_null, self.excess)


@dataclass
class SubspacesData:
    """The input of `run`: the task (`TaskSet`; for the default split, made with disjoint parts), optionally a heads
    patching sweep (an `analyses.patching.PatchingResult`, its summary dict or the path of its result.json) whose
    top heads read a residual site when the config names none, and `choices`: what the caller chose from data
    before this run and on which items (e.g. the site from a sweep of the training items), copied into the Result.
    The sweep should have seen no test items."""

    task: TaskSet
    sweep: Any = None
    choices: dict[str, str] = field(default_factory=dict)


def _heads_grid(sweep: Any) -> tuple[list[list[float]], list[int], str]:
    """(values [layer][head], layers, what it came from) of a heads patching sweep."""
    if isinstance(sweep, (str, Path)):
        path = Path(sweep)
        path = path / "result.json" if path.is_dir() else path
        if not path.is_file():
            raise InterpError(f"no patching result at {path}; give the --out folder of `interp patch` or its result.json")
        return _heads_grid({**json.loads(path.read_text(encoding="utf-8")), "_path": str(path)})
    if isinstance(sweep, dict):
        grid = sweep.get("grids", {}).get("heads")
        if not grid or grid.get("columns", "head").split(" ")[0] != "head":
            raise InterpError("the patching sweep has no heads grid; run `interp patch --sites heads`")
        where = sweep.get("_path", "given as a summary")
        return grid["values"], list(grid["row_labels"]), (f"{where}: task {sweep.get('task')!r}, "
                                                           f"{sweep.get('n_items')} items")
    grids = getattr(sweep, "grids", None)
    if isinstance(grids, dict) and "heads" in grids:
        g = grids["heads"]
        return g.values.tolist(), list(g.layers), (f"the PatchingResult given: task {sweep.task!r}, "
                                                   f"{sweep.n_items} items")
    raise InterpError(f"cannot read heads from {type(sweep).__name__}; give a PatchingResult with a heads grid, its "
                      f"summary, or the path of its result.json")


def top_heads(sweep: "PatchingResult | dict | str | Path", site: str, n: int) -> tuple[list[tuple[int, int]], str]:
    """The `n` heads of a heads patching sweep that restore the most (largest normalised value) among the layers
    that read `site` (above a `hook_resid_post`, from a `hook_resid_pre` on), and where they came from."""
    values, layers, source = _heads_grid(sweep)
    layer = int(site.split(".")[1])
    first = layer + ("hook_resid_post" in site)
    cells = [(float(v), lay, h) for lay, row in zip(layers, values) for h, v in enumerate(row)
             if lay >= first and not math.isnan(float(v))]
    if not isinstance(n, int) or n < 1 or not cells:
        raise InterpError(f"n_readers={n!r} and {len(cells)} heads of the sweep at layers >= {first}: give n_readers "
                          f">= 1 and a sweep over layers that read {site}")
    cells.sort(key=lambda c: -c[0])
    return [(lay, h) for _, lay, h in cells[:n]], source


def _departures(task: TaskSet, split: D.Split, site: str, readers: Sequence[tuple[int, int]]) -> list[str]:
    """The departures from the reference's experiment that the data and options in force make."""
    meta = task.meta
    out = []
    if split.how == "random":
        out.append("test items from the training distribution (split='random'): they share names, objects, places "
                   "and templates with the training items; the reference tests on disjoint ones")
    corrupt = meta.get("corrupt")
    if corrupt in ("swap", "abc"):
        out.append(f"one-way pairs (corrupt={corrupt!r}): the base is always the corrupted prompt and every label "
                   f"changes; the reference trains on both directions of the position variable and on pairs whose "
                   f"label is kept")
    elif corrupt == "position":
        if meta.get("kinds") == "changing":
            out.append("label-changing pairs only in training (kinds='changing'); the reference also trains on pairs "
                       "whose label is kept")
        if meta.get("preserve") == "names":
            out.append("label-kept pairs with two new names (preserve='names'); the reference's repeat the base "
                       "prompt itself")
    elif "source" in meta:
        out.append(f"the user's pairs ({meta['source']}): the kinds of pair and the parts are the file's")
    elif task.name in ("laundry", "capitals"):
        out.append(f"task {task.name!r}: not the reference's IOI position variable (one-way clean/corrupted pairs)")
    for shared in meta.get("shared_by_parts", []):
        out.append(f"the train and test parts share the {shared}")
    if ("hook_resid" in site) and not readers:
        out.append("the residual stream is not decomposed against its readers (none named, no sweep given): only "
                   "the 'beyond the component' rule can fire")
    out.append("a validation part of the training items picks the epoch kept (the reference trains a fixed number of "
               "epochs with a decaying learning rate and no validation part)")
    return out


def run(model: "Model", data: "TaskSet | SubspacesData", config: SubspacesConfig | None = None) -> SubspaceResult:
    """DAS at `config.site` and `config.positions` on the items of the task `data` that `model` solves, with the
    baselines and the illusion diagnostics (module docstring). `data`: a `TaskSet` or a `SubspacesData`."""
    if config is None:
        raise InterpError("DAS needs a site: give a SubspacesConfig(site='blocks.L.hook_resid_post', ...)")
    cfg = config
    data = data if isinstance(data, SubspacesData) else SubspacesData(data)
    site, k, positions, seed = cfg.site, cfg.k, list(cfg.positions), cfg.seed
    train_options = dict(epochs=cfg.epochs, lr=cfg.lr, patience=cfg.patience, progress=cfg.progress)
    task = data.task
    if cfg.split not in SPLITS:
        raise InterpError(f"split={cfg.split!r}; choose disjoint (test items from their own vocabulary) or random")
    if cfg.split == "disjoint" and task.parts is None:
        raise InterpError(f"task {task.name!r} has no train/test parts, so its test items cannot come from their own "
                          f"names and templates: make it with make_task(..., test=0.25) (interp das does), give a "
                          f"pairs file with a part on every line, or choose split='random'")
    thresholds = cfg.thresholds()
    start = time.perf_counter()
    (s,) = model.sites(site)
    D.check_k(k, site_width(model, s), s.name)  # before any forward
    readers = parse_heads(cfg.readers)
    chosen = dict(data.choices)
    if not readers and data.sweep is not None and s.kind != "mlp.hook_post":
        readers, source = top_heads(data.sweep, s.name, cfg.n_readers)
        chosen["readers"] = (f"the top {cfg.n_readers} heads of a heads patching sweep ({source}), chosen from that "
                             f"sweep's items, which should exclude the test items")
    reader = reader_weight(model, s.name, readers, cfg.reader_weights)  # checks the heads before any forward
    kept = solvable(model, task, cfg.min_solve_rate)
    problem = D.interchange(model, kept, s.name, positions, batch_size=cfg.batch_size)
    if cfg.split == "disjoint":
        assert problem.parts is not None  # the task has parts, and solvable keeps them
        split = D.split_parts(problem.parts, seed)
    else:
        split = D.split_items(problem.n, seed)
    prepare = time.perf_counter() - start
    resid = s.kind != "mlp.hook_post"
    result = compare(problem, reader, k, seed, model.name, task.name, split=split, thresholds=thresholds,
                     reader_note=describe_reader(s.name, readers, cfg.reader_weights),
                     rule="outside the readers" if resid else "dormant pathway", **train_options)
    defaults = Thresholds()
    result.thresholds = {key: {"value": v, "fixed": "before the run: the config default" if v == getattr(defaults, key)
                               else f"before the run: set in the config (default {getattr(defaults, key)})"}
                         for key, v in thresholds.to_json().items()}
    result.readers.update(heads=[f"{layer}.{head}" for layer, head in readers],
                          weights=list(cfg.reader_weights) if readers else [])
    result.chosen_from_data = {"readers": "none (named in the config)" if cfg.readers else "none read from data",
                               "thresholds": "none: every threshold was fixed before the run",
                               **chosen}
    result.options = {"split": cfg.split, "task": {key: v for key, v in task.meta.items()
                                                   if key not in ("choices", "part", "variable")},
                      "config": dataclasses.asdict(cfg)}
    result.departures = _departures(kept, split, s.name, readers)
    result.timings.update(prepare=prepare, total=time.perf_counter() - start)
    return result


def run_toy(kind: str = "illusion", n: int = 64, k: int = 1, seed: int = 0, epochs: int = 100, lr: float = 0.1,
            patience: int = 15, batch_size: int = 8, **train_options) -> SubspaceResult:
    """The same on a toy network of `interp.circuits.toy` ("illusion" or "faithful"), whose hidden layer is the site
    (a random split of one distribution: the toy has no vocabulary)."""
    toy = make_toy(kind)
    problem = toy_interchange(toy, n, seed)
    problem.batch_size = batch_size
    train_options.setdefault("progress", False)
    return compare(problem, toy.W_out, k, seed, toy.name, "toy", epochs=epochs, lr=lr, patience=patience,
                   reader_note="the toy's output weights W_out", **train_options)
