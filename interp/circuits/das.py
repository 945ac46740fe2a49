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
weights are never handed to the optimiser, and gradients are taken with respect to the basis only), Adam, a
train / validation / test split of the items with the basis of the best validation loss kept (early stopping
after `patience` epochs without improvement), scored on the test items.
What departs:
- the paper learns a full d x d rotation and keeps k of its rows; here only a d x k matrix with orthonormal
  columns is a parameter (`torch.nn.utils.parametrizations.orthogonal`, Householder map, without its default
  trivialization, which would keep a random d x d base matrix), the same family of subspaces with d k instead of
  d^2 numbers (d is the width of the site, e.g. the MLP's at `mlp.hook_post`);
- the causal variable is a task's clean/corrupted difference, so the counterfactual answer is the source run's own
  answer; no causal model is needed beyond that.

Convention on the paired tasks of `interp.circuits.tasks` (the same as `interp.circuits.patching`): the base is the *corrupted*
prompt and the source the *clean* one; the counterfactual answer is the clean answer (`item.answer`). The metric
is the last-position logit difference answer - wrong (`item.wrong`), and a patch's recovery is
`normalise(mean patched, mean clean, mean corrupted)`: 1 restores the clean behaviour, 0 leaves the corrupted one.
On IOI with the name-swap corruption (`make_task("ioi", corrupt="swap")`) the corrupted prompt repeats the IO
instead of the subject, so its own answer is the clean subject (the wrong answer); patching the clean run's
subspace into it should move the answer from the subject back to the IO. With the ABC corruption (three new
names) the clean IO does not occur in the corrupted prompt at all, and a patch at the last position must carry
the name itself.

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
from jaxtyping import Float, Int
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
    of the two runs at the site and positions, [n, positions, d]. answer: the counterfactual (source) answer,
    wrong: the base's, per item; source_ld / base_ld: the unpatched runs' logit differences answer - wrong.
    provenance: model fingerprint, site, layer, positions, task (copied into every subspace fitted on it)."""

    run: Run
    source: Float[Tensor, "n p d"]
    base: Float[Tensor, "n p d"]
    answer: Int[Tensor, "n"]
    wrong: Int[Tensor, "n"]
    source_ld: Float[Tensor, "n"]
    base_ld: Float[Tensor, "n"]
    provenance: dict = field(default_factory=dict)
    batch_size: int = 32

    @property
    def n(self) -> int:
        return self.source.shape[0]

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
    def logit_diffs(self, items: Sequence[int], basis: Tensor | None) -> Float[Tensor, "b"]:
        """The patched runs' logit differences answer - wrong, one per item (batched, no gradients)."""
        out = []
        for chunk in self.batches(items):
            index = torch.tensor(chunk)
            out.append(logit_diff(self.run(chunk, basis).float().cpu(), self.answer[index], self.wrong[index]))
        return torch.cat(out)

    def recovery(self, items: Sequence[int], basis: Tensor | None) -> float:
        """normalise(mean patched, mean source, mean base) over `items`: 1 = the source behaviour, 0 = the base's."""
        index = torch.tensor(list(items))
        if basis is not None and basis.shape[0] == 0:
            return 0.0  # an empty subspace changes nothing (SubspacePatch with k = 0): no forward needed
        patched = self.logit_diffs(items, basis).mean()
        return float(normalise(patched, self.source_ld[index].mean(), self.base_ld[index].mean()))


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

    name = task.name if isinstance(task, TaskSet) else "pairs"
    provenance = {"model": model.fingerprint, "site": s.name, "layer": s.layer, "positions": positions, "task": name,
                  "base": "corrupted", "source": "clean",
                  "data_hash": Subspace.data_hash(tokens.clean, tokens.corrupted)}
    return Interchange(run, source, base, tokens.answer, tokens.wrong, runs.clean_ld, runs.corrupted_ld, provenance,
                       batch_size)


# ----- the split -----

@dataclass(frozen=True)
class Split:
    """Item indices of the training, validation and test parts."""

    train: list[int]
    val: list[int]
    test: list[int]

    def to_json(self) -> dict:
        return {"train": self.train, "val": self.val, "test": self.test}


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
    """Mean cross-entropy to the counterfactual answer and recovery of the patched runs of `items`."""
    total, lds = 0.0, []
    with torch.no_grad():
        for chunk in problem.batches(items):
            index = torch.tensor(chunk)
            logits = problem.run(chunk, basis).float()
            total += float(F.cross_entropy(logits, problem.answer[index].to(logits.device), reduction="sum"))
            lds.append(logit_diff(logits.cpu(), problem.answer[index], problem.wrong[index]))
    index = torch.tensor(items)
    rec = normalise(torch.cat(lds).mean(), problem.source_ld[index].mean(), problem.base_ld[index].mean())
    return total / len(items), float(rec)


def train(problem: Interchange, k: int = 1, split: Split | None = None, seed: int = 0, epochs: int = 40,
          lr: float = 1e-2, patience: int = 5, progress: bool | None = None) -> DASFit:
    """Learn a k-dimensional subspace at the problem's site (module docstring): Adam on the cross-entropy of the
    patched runs to the counterfactual answer, one step per batch of training items, for at most `epochs` epochs;
    the basis of the best validation loss is kept, and training stops after `patience` epochs without a better one.
    Seeded: the split (when not given), the random start and the item order come from `seed`."""
    k = check_k(k, problem.width, problem.site)
    split = split_items(problem.n, seed) if split is None else split
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
                  "epochs_run": len(curves["train_loss"]), "best_epoch": best_epoch, "lr": lr,
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
