"""Distributed alignment search (DAS): learn the k-dimensional subspace at one site through which a task's
answer can be swapped by patching.

The method (Geiger, Wu, Potts, Icard and Goodman 2023, "Finding alignments between interpretable causal variables
and distributed neural representations"). An interchange intervention runs a *base* input, but at one site and
positions takes the component inside a subspace from the run of a *source* input: x_base + (x_source - x_base)
B^T B, with B the orthonormal k x d basis (`interp.core.interventions.SubspacePatch`, `patch_component`). If the
subspace holds a causal variable, the patched run answers as the causal model says it should with the variable set
to its value on the source. DAS learns B by gradient descent on the cross-entropy of the patched run's last-token
logits to that counterfactual answer, with the model frozen; it is scored on held-out items by how much of the
source behaviour the patch restores.

What is faithful: the interchange intervention, the loss, a learned orthonormal basis, the model frozen (its
weights are never handed to the optimiser, and gradients are taken with respect to the basis only), Adam, and,
on a task made with disjoint parts (`interp.circuits.tasks.make_task(..., test=...)`, or a pairs file's `part`),
Makelov et al.'s split: the test items come from their own names, objects, places and templates
(`split_parts`), the training items from the others. On the IOI position variable (`corrupt="position"`) the
training pairs are those of the reference (github.com/amakelov/activation-patching-illusion,
`ioi_interventions.ipynb`: `sample_das` with base and source patterns ABB and BAB): both directions of the
change and the pairs whose label is kept; the test pairs are the two label-changing directions.
What departs:
- the training items are split again into training and validation parts (a third for validation, seeded), and the
  basis of the best validation loss is kept (early stopping after `patience` epochs without improvement); the
  reference trains a fixed number of epochs with a linearly decaying learning rate and no validation part;
- `split_items` (a seeded random split of one set of items, so test items share names and templates with the
  training ones) is the old behaviour, kept as a named option (`analyses.subspaces.SubspacesConfig(split="random")`);
- the paper learns a full d x d rotation and keeps k of its rows; here only a d x k matrix with orthonormal
  columns is a parameter (`torch.nn.utils.parametrizations.orthogonal`, Householder map, without its default
  trivialization, which would keep a random d x d base matrix), the same family of subspaces with d k instead of
  d^2 numbers (d is the width of the site, e.g. the MLP's at `mlp.hook_post`);
- the causal model is given by the items: each names its counterfactual answer (`item.answer`) and, where that is
  not the source's own answer, a target prompt whose own run answers as a full transfer should
  (`TaskItem.target`); recovery is normalised against that run (the reference reports the raw patched logit
  difference and the interchange accuracy; the accuracy is reported here too).

Convention on the paired tasks of `interp.circuits.tasks` (the same as `interp.circuits.patching`): the base is the *corrupted*
prompt and the source the *clean* one; the counterfactual answer is `item.answer` (the clean answer on the
ordinary tasks). The metric is the last-position logit difference answer - wrong (`item.wrong`), and a patch's
recovery is `normalise(mean patched, mean target, mean corrupted)` over the items whose label changes (target:
the clean run unless the item names another prompt): 1 gives the target behaviour, 0 leaves the corrupted one.
Items whose label is kept have no gap to recover; they count in the loss and in the interchange accuracy (the
share of patched runs whose top token is the counterfactual answer), which is reported per kind of pair.
On IOI with the name-swap corruption (`make_task("ioi", corrupt="swap")`, one-way pairs: the base is always the
prompt with the IO repeated) the corrupted prompt repeats the IO instead of the subject, so its own answer is the
clean subject (the wrong answer); patching the clean run's subspace into it should move the answer from the
subject back to the IO. With the ABC corruption (three new names) the clean IO does not occur in the corrupted
prompt at all, and a patch at the last position must carry the name itself. With the position variable
(`corrupt="position"`, the default of `interp das`) source and base hold the same two names and the patch must
carry where the subject stood, not who it was.

Cost: the clean and corrupted runs go through the model once (`interp.circuits.patching.prepare`, which keeps the site's
activations and the corrupted keys and values). A training step then runs only what a patch can change: the
tokens from the first patched position on (the earlier tokens continue the corrupted run's keys and values) and,
on Llama, Qwen2 and Mistral, only the layers from the site's layer L on (the corrupted `hook_resid_pre` of L fed
in, `interp.circuits.patching._from_layer`). Every site kind starts at layer L, `hook_resid_post` included, so that one
hook (`SubspacePatch`) patches `hook_resid_pre`, `hook_resid_post` and `mlp.hook_post` alike: for
`hook_resid_post` that recomputes layer L (one layer more than starting above it), for `mlp.hook_post` it
recomputes layer L's attention and the MLP up to its hidden activation, which the hook then patches. At the last
position an epoch is ceil(n_train / batch_size) forward and backward passes of one token per item through the
layers from L on, plus ceil(n_val / batch_size) such forwards for validation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal
from tqdm.auto import tqdm

from interp.circuits import patching as P
from interp.circuits.tasks import TaskSet, TaskTokens, logit_diff, normalise
from interp.core.interventions import Patch, SubspacePatch, site_width
from interp.core.prefix import sliding_window
from interp.core.runner import forward
from interp.core.subspace import Subspace
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.model import Model

KINDS = ("hook_resid_pre", "hook_resid_post", "mlp.hook_post")  # the sites DAS trains at
Run = Callable[[Sequence[int], "Tensor | None"], Tensor]


@dataclass
class Interchange:
    """An interchange-intervention problem: n items, each a base run and a source run of one network, cut at one site.

    run(items, basis): the last-position logits [len(items), vocab] of the base runs of `items` with the source
    runs' component inside span(basis) ([k, d] orthonormal rows, differentiable) patched in at the site and
    positions; basis None patches the whole component (plain activation patching). source / base: the activations
    of the two runs at the site and positions, [n, positions, d]. answer: the counterfactual answer, wrong: the
    other one, per item; source_ld / base_ld: the unpatched runs' logit differences answer - wrong.
    provenance: model fingerprint, site, layer, positions, task (copied into every subspace fitted on it).
    target_ld: the logit difference of the run a full transfer should match (None: source_ld); changes: whether
    each item's label changes (None: every item's); parts: "train"/"test" per item where the task has disjoint
    parts; labels: [n, 2] the class (1/0) of the source and of the base run's value of the variable, for the
    baselines fitted on activations (None: source 1, base 0)."""

    run: Run
    source: Float[Tensor, "n p d"]
    base: Float[Tensor, "n p d"]
    answer: Int[Tensor, "n"]
    wrong: Int[Tensor, "n"]
    source_ld: Float[Tensor, "n"]
    base_ld: Float[Tensor, "n"]
    provenance: dict = field(default_factory=dict)
    batch_size: int = 32
    target_ld: Float[Tensor, "n"] | None = None
    changes: Bool[Tensor, "n"] | None = None
    parts: list[str] | None = None
    labels: Int[Tensor, "n 2"] | None = None

    def __post_init__(self) -> None:
        n = self.source.shape[0]
        if self.target_ld is None:
            self.target_ld = self.source_ld
        if self.changes is None:
            self.changes = torch.ones(n, dtype=torch.bool)
        if self.labels is None:
            self.labels = torch.tensor([[1, 0]] * n, dtype=torch.long).reshape(n, 2)

    @property
    def n(self) -> int:
        return self.source.shape[0]

    def changing(self, items: Sequence[int]) -> list[int]:
        """The items among `items` whose label changes (the ones a recovery is measured on)."""
        assert self.changes is not None  # set in __post_init__
        return [i for i in items if bool(self.changes[i])]

    @property
    def width(self) -> int:
        return self.source.shape[-1]

    @property
    def site(self) -> str:
        return str(self.provenance.get("site", "the site"))

    def batches(self, items: Sequence[int]) -> list[list[int]]:
        items = list(items)
        return [items[s:s + self.batch_size] for s in range(0, len(items), self.batch_size)]

    @torch.no_grad()
    def evaluate(self, items: Sequence[int], basis: Tensor | None) -> tuple[Float[Tensor, "b"], Bool[Tensor, "b"]]:
        """The patched runs' logit differences answer - wrong and whether their top token is the counterfactual
        answer, one per item (batched, no gradients)."""
        lds, hits = [], []
        for chunk in self.batches(items):
            index = torch.tensor(chunk)
            logits = self.run(chunk, basis).float().cpu()
            lds.append(logit_diff(logits, self.answer[index], self.wrong[index]))
            hits.append(logits.argmax(-1) == self.answer[index])
        return torch.cat(lds), torch.cat(hits)

    def logit_diffs(self, items: Sequence[int], basis: Tensor | None) -> Float[Tensor, "b"]:
        """The patched runs' logit differences answer - wrong, one per item (batched, no gradients)."""
        return self.evaluate(items, basis)[0]

    def normalised(self, items: Sequence[int], patched: Tensor) -> float:
        """normalise(mean patched, mean target, mean base) of the logit differences `patched` of `items`, over the
        items whose label changes."""
        assert self.target_ld is not None and self.changes is not None  # set in __post_init__
        index = torch.tensor(list(items))
        keep = self.changes[index]
        if not keep.any():
            raise InterpError("none of these items changes its label, so there is no gap to recover; measure the "
                              "recovery on items whose target is not the base prompt")
        return float(normalise(patched[keep].mean(), self.target_ld[index][keep].mean(), self.base_ld[index][keep].mean()))

    def recovery(self, items: Sequence[int], basis: Tensor | None) -> float:
        """normalise(mean patched, mean target, mean base) over the items among `items` whose label changes: 1 = the
        target behaviour (the source's on ordinary pairs), 0 = the base's."""
        items = self.changing(items)
        if not items:
            raise InterpError("none of these items changes its label, so there is no gap to recover; measure the "
                              "recovery on items whose target is not the base prompt")
        if basis is not None and basis.shape[0] == 0:
            return 0.0  # an empty subspace changes nothing (SubspacePatch with k = 0): no forward needed
        return self.normalised(items, self.logit_diffs(items, basis))

    def accuracy(self, items: Sequence[int], basis: Tensor | None) -> dict[str, float | None]:
        """The interchange accuracy (the share of patched runs whose top token is the counterfactual answer) over
        `items`, and separately over those whose label changes and those whose label is kept (None where none)."""
        assert self.changes is not None  # set in __post_init__
        items = list(items)
        _, hits = self.evaluate(items, basis)
        changes = self.changes[torch.tensor(items)]

        def share(mask: Tensor) -> float | None:
            return float(hits[mask].float().mean()) if mask.any() else None

        return {"all": share(torch.ones_like(changes)), "changing": share(changes), "kept": share(~changes)}


def _positions(positions: int | Sequence[int], shortest: int) -> list[int]:
    positions = [positions] if isinstance(positions, int) and not isinstance(positions, bool) else positions
    if isinstance(positions, (str, bool)) or not positions or \
            not all(isinstance(p, int) and not isinstance(p, bool) and p < 0 for p in positions):
        raise InterpError(f"DAS positions must be indices counted from the end of the prompt (negative, e.g. [-1]), "
                          f"got {positions!r}")
    if -min(positions) > shortest:
        raise InterpError(f"position {min(positions)} is outside the shortest prompt ({shortest} tokens)")
    return sorted(set(positions))


def interchange(model: "Model", task: TaskSet | TaskTokens, site: str, positions: int | Sequence[int] = (-1,),
                batch_size: int = 32) -> Interchange:
    """The interchange problem of a paired task on `model` at `site` and `positions` (counted from the end): base =
    the corrupted prompts, source = the clean ones, counterfactual answer = the clean answer (module docstring).
    Runs the clean and corrupted prompts once; every `run` after that starts at the site's layer."""
    tokens = task.tokens(model) if isinstance(task, TaskSet) else task
    P.check_tokens(model, tokens)
    if tokens.target is not None and [len(t) for t in tokens.target] != [len(c) for c in tokens.corrupted]:
        raise InterpError("every target prompt must have its corrupted prompt's token length")
    (s,) = model.sites(site)
    if s.kind not in KINDS:
        raise InterpError(f"DAS trains at {', '.join(KINDS)}; got {s}")
    positions = _positions(positions, min(len(r) for r in tokens.clean))
    runs = P.prepare(model, tokens, [s], batch_size=batch_size)
    cols = [runs.width + p for p in positions]
    source, base = runs.clean[s][:, cols], runs.corrupted[s][:, cols]
    start = s.layer if model.hf.config.model_type in P.SKIPS_LAYERS else 0
    window = sliding_window(model)
    reuse = window is None or runs.width <= window  # continue the corrupted keys and values before the patch

    def run(items: Sequence[int], basis: Tensor | None) -> Tensor:
        items = list(items)
        cuts = [runs.lengths[i] + positions[0] if reuse else 0 for i in items]
        inputs = P._rows_inputs(model, runs, items, cuts, start)
        src = source[items]
        patch = Patch(s.name, src, positions) if basis is None else SubspacePatch(s.name, basis, src, positions)
        with P._from_layer(model, start):
            logits = forward(model, **inputs, edits=[patch]).logits
        assert logits is not None  # logits were asked for and the forward ran to the end
        return logits.float()

    target_ld = runs.clean_ld
    if tokens.target is not None:  # the targets' own runs: one more plain forward
        with torch.no_grad():
            _, target_logits, _ = P._forward_keep(model, tokens.target, [], runs.width, batch_size, False)
        target_ld = logit_diff(target_logits.detach(), tokens.answer, tokens.wrong)
    name = task.name if isinstance(task, TaskSet) else "pairs"
    parts = task.parts if isinstance(task, TaskSet) else None
    labels = _labels(task.meta.get("variable")) if isinstance(task, TaskSet) else None
    provenance = {"model": model.fingerprint, "site": s.name, "layer": s.layer, "positions": positions, "task": name,
                  "base": "corrupted", "source": "clean",
                  "data_hash": Subspace.data_hash(tokens.clean, tokens.corrupted)}
    return Interchange(run, source, base, tokens.answer, tokens.wrong, runs.clean_ld, runs.corrupted_ld, provenance,
                       batch_size, target_ld, torch.tensor(tokens.changes), parts, labels)


def _labels(values: list | None) -> Tensor | None:
    """[n, 2] classes of the (source, base) values of a two-valued variable (`meta["variable"]`): 1 for the value
    that sorts first ("ABB" of "ABB"/"BAB"); None when there are none or not exactly two values."""
    if not values:
        return None
    kinds = sorted({v for pair in values for v in pair})
    if len(kinds) != 2:
        return None
    return torch.tensor([[int(v == kinds[0]) for v in pair] for pair in values], dtype=torch.long)


# ----- the split -----

@dataclass(frozen=True)
class Split:
    """Item indices of the training, validation and test parts; `how`: "disjoint" (the test items come from their
    own vocabulary, `split_parts`) or "random" (`split_items`)."""

    train: list[int]
    val: list[int]
    test: list[int]
    how: str = "random"

    def to_json(self) -> dict:
        return {"train": self.train, "val": self.val, "test": self.test, "how": self.how}


def split_parts(parts: Sequence[str], seed: int = 0, val: float = 1 / 3) -> Split:
    """The test items are those marked "test" (drawn from their own names, objects, places and templates); the
    items marked "train" are split at random (seeded) into training and validation parts, `val` of them (at least
    one) for validation."""
    parts = list(parts)
    bad = sorted({p for p in parts if p not in ("train", "test")})
    if bad:
        raise InterpError(f"item parts must be 'train' or 'test', got {bad}")
    train = [i for i, p in enumerate(parts) if p == "train"]
    test = [i for i, p in enumerate(parts) if p == "test"]
    if len(train) < 2 or not test:
        raise InterpError(f"{len(train)} training and {len(test)} test items: DAS needs at least 2 items of the "
                          f"training part (to train and validate) and 1 of the test part")
    if not 0 < val < 1:
        raise InterpError(f"val={val} must be a share in (0, 1)")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(len(train) - 1, max(1, round(len(train) * val)))
    return Split(sorted(train[i] for i in order[n_val:]), sorted(train[i] for i in order[:n_val]), test, "disjoint")


def split_items(n: int, seed: int = 0, val: float = 0.25, test: float = 0.25) -> Split:
    """A seeded random split of n items: `val` and `test` shares (at least one item each), the rest for training."""
    if not isinstance(n, int) or n < 3:
        raise InterpError(f"DAS needs at least 3 items (one each to train, validate and test), got {n!r}")
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise InterpError(f"val={val} and test={test} must be shares in (0, 1) leaving items to train on")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val, n_test = max(1, round(n * val)), max(1, round(n * test))
    if n - n_val - n_test < 1:
        n_val, n_test = 1, 1
    return Split(sorted(order[n_val + n_test:]), sorted(order[:n_val]), sorted(order[n_val:n_val + n_test]))


# ----- training -----

class _Basis(nn.Module):
    """A d x k matrix kept with orthonormal columns by torch's orthogonal parametrization; `basis()` is its
    transpose, the [k, d] orthonormal rows a `Subspace` holds. Never a d x d rotation."""

    def __init__(self, d: int, k: int, generator: torch.Generator):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d, k))
        orthogonal(self, use_trivialization=False)  # no d x d base matrix: the Householder reflectors only
        q, _ = torch.linalg.qr(torch.randn(d, k, generator=generator))
        self.weight = q  # a random start: the parametrization's right inverse sets the parameter to give q

    def basis(self) -> Float[Tensor, "k d"]:
        return self.weight.T


@dataclass
class DASFit:
    """A trained DAS subspace and how it was trained: per-epoch curves (train_loss, val_loss, val_recovery), the
    epoch whose validation loss was best (its basis is `subspace`), the split, steps, time, forwards per epoch, and
    the largest |B B^T - I| of the kept basis as trained (before `Subspace` stores it)."""

    subspace: Subspace
    curves: dict[str, list[float]]
    best_epoch: int
    split: Split
    steps: int
    train_s: float
    forwards_per_epoch: int
    ortho_error: float

    def to_json(self) -> dict:
        return {"curves": self.curves, "best_epoch": self.best_epoch, "epochs_run": len(self.curves["train_loss"]),
                "steps": self.steps, "train_s": self.train_s, "forwards_per_epoch": self.forwards_per_epoch,
                "ortho_error": self.ortho_error, "split": self.split.to_json()}


def check_k(k, width: int, site: str) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= width:
        raise InterpError(f"k={k!r}: a DAS subspace at {site} has 1 to {width} dimensions (the width of its "
                          f"activations); choose k in 1..{width}")
    return k


def _validate(problem: Interchange, items: list[int], basis: Tensor) -> tuple[float, float]:
    """Mean cross-entropy to the counterfactual answer of the patched runs of `items`, and their recovery (over
    the items whose label changes; NaN where none does)."""
    total, lds = 0.0, []
    with torch.no_grad():
        for chunk in problem.batches(items):
            index = torch.tensor(chunk)
            logits = problem.run(chunk, basis).float()
            total += float(F.cross_entropy(logits, problem.answer[index].to(logits.device), reduction="sum"))
            lds.append(logit_diff(logits.cpu(), problem.answer[index], problem.wrong[index]))
    rec = problem.normalised(items, torch.cat(lds)) if problem.changing(items) else float("nan")
    return total / len(items), rec


def train(problem: Interchange, k: int = 1, split: Split | None = None, seed: int = 0, epochs: int = 40,
          lr: float = 1e-2, patience: int = 5, progress: bool | None = None) -> DASFit:
    """Learn a k-dimensional subspace at the problem's site (module docstring): Adam on the cross-entropy of the
    patched runs to the counterfactual answer, one step per batch of training items, for at most `epochs` epochs;
    the basis of the best validation loss is kept, and training stops after `patience` epochs without a better one.
    Seeded: the split (when not given: `split_parts` where the problem has parts, else `split_items`), the random
    start and the item order come from `seed`."""
    k = check_k(k, problem.width, problem.site)
    if split is None:
        split = split_parts(problem.parts, seed) if problem.parts is not None else split_items(problem.n, seed)
    if not isinstance(epochs, int) or epochs < 1 or not lr > 0 or not isinstance(patience, int) or patience < 1:
        raise InterpError(f"epochs={epochs!r}, patience={patience!r} must be positive integers and lr={lr!r} positive")
    gen = torch.Generator().manual_seed(seed)
    holder = _Basis(problem.width, k, gen)
    params = list(holder.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    curves: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "val_recovery": []}
    best_loss, best_basis, best_epoch, steps = math.inf, holder.basis().detach().clone(), -1, 0
    start = time.perf_counter()
    show = progress if progress is not None else epochs * len(split.train) > 256
    for epoch in tqdm(range(epochs), desc="DAS", unit="epoch", disable=not show):
        order = [split.train[i] for i in torch.randperm(len(split.train), generator=gen).tolist()]
        total = 0.0
        for chunk in problem.batches(order):
            index = torch.tensor(chunk)
            with torch.enable_grad():
                logits = problem.run(chunk, holder.basis())
                loss = F.cross_entropy(logits, problem.answer[index].to(logits.device))
                grads = torch.autograd.grad(loss, params)  # the basis only: the model's weights get no gradient
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
            opt.zero_grad(set_to_none=True)
            total += float(loss.detach()) * len(chunk)
            steps += 1
        basis = holder.basis().detach().clone()
        val_loss, val_rec = _validate(problem, split.val, basis)
        curves["train_loss"].append(total / len(split.train))
        curves["val_loss"].append(val_loss)
        curves["val_recovery"].append(val_rec)
        if val_loss < best_loss:
            best_loss, best_basis, best_epoch = val_loss, basis, epoch
        elif epoch - best_epoch >= patience:
            break
    train_s = time.perf_counter() - start
    provenance = {**problem.provenance, "method": "das", "k": k, "seed": seed, "steps": steps, "epochs": epochs,
                  "epochs_run": len(curves["train_loss"]), "best_epoch": best_epoch, "lr": lr, "split": split.how,
                  "loss": "cross-entropy of the patched run's last-position logits to the counterfactual answer"}
    forwards = len(problem.batches(split.train)) + len(problem.batches(split.val))
    b = best_basis.double().cpu()
    ortho_error = float((b @ b.T - torch.eye(k, dtype=b.dtype)).abs().max())
    return DASFit(Subspace(best_basis.cpu(), provenance), curves, best_epoch, split, steps, train_s, forwards,
                  ortho_error)


def fit(model: "Model", task: TaskSet | TaskTokens, site: str, k: int = 1, positions: int | Sequence[int] = (-1,),
        **options) -> DASFit:
    """`train` on `interchange(model, task, site, positions)`; `k` is checked against the site's width first."""
    (s,) = model.sites(site)
    check_k(k, site_width(model, s), s.name)
    return train(interchange(model, task, site, positions), k, **options)
