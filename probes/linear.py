"""Linear probes for every layer (and every head) at once.

A linear probe asks whether a concept is linearly readable from an activation: fit w, b so that
sigma(w . x + b) predicts the label. Fitting one probe per layer is the standard way to see where in depth a
concept becomes readable (Alain and Bengio 2016). Here the per-layer probes are one batched problem: X is
[n, L, d] (or [n, L, H, d_head] for per-head probes of `attn.hook_z`; any dims between n and d are batch dims)
and all probes are fitted together with batched linear algebra.

Two kinds:

- "logistic": L2-regularised logistic regression with exactly scikit-learn's objective for
  `LogisticRegression(C=C)` on RAW features (no standardisation; the intercept is not penalised):
      minimise  C * sum_i logloss(y_i, w . x_i + b) + ||w||^2 / 2.
  It is solved by Newton's method (batched Hessian solves, with a backtracking line search), which converges
  quadratically and is invariant to feature scale, so raw residual-stream features with their large outlier
  dimensions need no standardisation. It stops by scikit-learn's rule (`tol`, default scikit-learn's 1e-4: every
  gradient component of the mean objective at most `tol`), in float32, or float64 for a `tol` below 1e-6.
- "mass_mean": the mass-mean probe of Marks and Tegmark (2023): w = mu1 - mu0, the difference of class means,
  with the bias placing the decision boundary half-way between the means, b = -w . (mu0 + mu1) / 2. This is the
  plain variant, not the "iid" one that whitens by the shared covariance. Its probabilities are not
  calibrated; its accuracy and direction are what it is for.

`evaluate` splits the data (stratified), fits both kinds and returns a `ProbeReport` of train and test
accuracy per layer, with a figure.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from interp.directions.estimators import check_xy, class_means, fit_provenance
from interp.errors import InterpError
from interp.io import read_meta, read_tensors, write_json, write_tensors

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from interp.core.model import Model

KINDS = ("logistic", "mass_mean")
TENSORS = "probes.safetensors"
META = "probes.json"
FORMAT = "interp.probes/1"
_CHUNK_BYTES = 2**22  # design matrices fitted together: small enough to stay in the CPU's cache (see `fit`)
_HESSIAN_EVERY = 2  # Newton iterations per Hessian (formed on the first, reused on the next)
_FLOAT32_TOL = 1e-6  # below this gradient tolerance float32 cannot resolve the gradient: the fit runs in float64
_STEPS = (1.0, 0.5, 0.25, 0.1, 0.03, 0.01)  # the backtracking line search's step sizes, largest first


def _logistic_loss(z: Tensor, t: Tensor, w: Tensor, C: float) -> Tensor:
    """C * sum logloss + ||w||^2 / 2 for logits z [..., n], targets t [n] and weights w [..., d]."""
    return C * F.binary_cross_entropy_with_logits(z, t.expand_as(z), reduction="none").sum(-1) + 0.5 * (w**2).sum(-1)


def fit_logistic(X: Float[Tensor, "b n d"], y: Tensor, C: float, max_iter: int, tol: float) -> tuple[Tensor, Tensor, int, Tensor]:
    """Batched Newton's method for b independent L2 logistic regressions sharing the labels y [n].

    Returns weights [b, d], intercepts [b], iterations run, and a bool [b] of which probes converged.
    Stopping rule (scikit-learn's for `LogisticRegression(tol=tol)`, lbfgs): a probe has converged when every
    component of the gradient of the mean objective, mean logloss + ||w||^2 / (2 C n), is at most `tol` in absolute
    value; it then stops moving while the others go on. One departure: at least one Newton step is taken, where
    scikit-learn stops at w = 0 when the gradient there is already within tol (small activations, e.g. a tiny
    random model's), which would give probes with no direction.
    Precision: float32, or float64 when X is float64, when n < d (the reduced problem is small), when `tol` is
    below `_FLOAT32_TOL`, and for any probe the float32 run left unconverged; weights come back in float64. The Hessian is
    formed every `_HESSIAN_EVERY` iterations and reused in between, its Cholesky solve in float64; a backtracking
    line search (over `_STEPS`) never lets a probe's loss rise, whatever the Hessian's age. A probe whose loss no
    step lowers has stalled: in float64 that is the optimum to machine precision (converged).
    With fewer examples than dimensions (n < d) the optimal w lies in the span of the examples (the penalty
    only grows outside it, the logits do not change), so the problem is solved exactly in an orthonormal basis
    Q of that span, [n, n] instead of [n, d], and mapped back as w = Q a.
    """
    B, n, d = X.shape
    dtype = torch.float64 if X.dtype == torch.float64 or tol < _FLOAT32_TOL else torch.float32
    if n < d:
        Q, _ = torch.linalg.qr(X.to(torch.float64).transpose(1, 2))  # [b, d, n], orthonormal columns spanning the examples
        a, b, it, conv = fit_logistic(X.to(torch.float64) @ Q, y, C, max_iter, tol)  # small: float64
        return (Q @ a[..., None])[..., 0], b, it, conv
    dev = X.device
    Xt = torch.cat([X.to(dtype), X.new_ones(B, n, 1, dtype=dtype)], -1)  # [b, n, d + 1]
    t = y.to(dev, dtype)
    beta = torch.zeros(B, d + 1, dtype=dtype, device=dev)
    z = torch.zeros(B, n, dtype=dtype, device=dev)  # logits X beta, kept up to date by the steps
    loss = _logistic_loss(z, t, beta[:, :-1], C)
    penalty = torch.ones(d + 1, dtype=dtype, device=dev)
    penalty[-1] = 0.0  # the intercept is not penalised
    ridge = torch.diag(torch.cat([penalty[:-1], penalty.new_full((1,), 1e-10 * C * n)]).double())  # H stays invertible
    gtol = tol * C * n  # scikit-learn's tolerance on the mean objective, in this objective's units
    converged = torch.zeros(B, dtype=torch.bool, device=dev)
    stalled = torch.zeros(B, dtype=torch.bool, device=dev)
    chol = None
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (returned: the iterations run)
        p = torch.sigmoid(z)
        grad = C * torch.bmm((p - t)[:, None, :], Xt)[:, 0] + penalty * beta
        converged = (grad.abs().amax(-1) <= gtol) & (it > 1)  # one Newton step at least: never w = 0 (see above)
        if (converged | stalled).all():
            break
        if chol is None or (it - 1) % _HESSIAN_EVERY == 0:
            Xs = Xt * (p * (1 - p))[..., None]
            chol = torch.linalg.cholesky(C * torch.bmm(Xs.transpose(1, 2), Xt).double() + ridge)
        step = torch.cholesky_solve(grad.double()[..., None], chol)[..., 0].to(dtype)
        z_step = torch.bmm(Xt, step[..., None])[..., 0]
        todo = ~converged & ~stalled
        for size in _STEPS:
            rows = todo.nonzero()[:, 0]
            if len(rows) == 0:
                break
            zc, bc = z[rows] - size * z_step[rows], beta[rows] - size * step[rows]
            lc = _logistic_loss(zc, t, bc[:, :-1], C)
            ok = lc <= loss[rows]
            done = rows[ok]
            stalled[done] = lc[ok] == loss[done]  # no lower loss at this precision: the optimum to it
            z[done], beta[done], loss[done] = zc[ok], bc[ok], lc[ok]
            todo[done] = False
        stalled |= todo  # no step keeps the loss: likewise
        if (converged | stalled).all():
            break
    if dtype == torch.float64:  # stalled in float64: the optimum to machine precision
        converged |= stalled
    beta = beta.double()
    if dtype == torch.float32 and not converged.all():  # float32 ran out of digits first: these again in float64
        redo = (~converged).nonzero()[:, 0]
        w64, b64, it64, converged[redo] = fit_logistic(X[redo].double(), y, C, max_iter, tol)
        beta[redo] = torch.cat([w64, b64[:, None]], -1)
        it = max(it, it64)
    return beta[:, :-1], beta[:, -1], it, converged


class LinearProbes:
    """Per-layer (per-head) linear probes, fitted all at once. See the module docstring for the two kinds.

    Learned: `coef_` [*batch, d], `intercept_` [*batch], `n_iter_`, `converged_` (logistic), `provenance_`.
    `decision_function`, `predict_proba` and `predict` return [n, *batch]; `score` returns accuracy [*batch].
    They are differentiable torch operations on X's device and dtype, so attacks can use frozen probes as losses.
    """

    def __init__(self, kind: str = "logistic", C: float = 1.0, max_iter: int = 100, tol: float = 1e-4,
                 provenance: dict | None = None):
        if kind not in KINDS:
            raise InterpError(f"unknown probe kind {kind!r}; use one of {', '.join(KINDS)}")
        if not isinstance(C, (int, float)) or isinstance(C, bool) or not C > 0:
            raise InterpError(f"C (inverse regularisation strength) must be a positive number, got {C!r}")
        if not isinstance(max_iter, int) or max_iter < 1:
            raise InterpError(f"max_iter must be a positive integer, got {max_iter!r}")
        if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not tol > 0:
            raise InterpError(f"tol (the gradient tolerance, scikit-learn's) must be a positive number, got {tol!r}")
        self.kind, self.C, self.max_iter, self.tol, self.provenance = kind, float(C), max_iter, float(tol), provenance

    def __repr__(self) -> str:
        fitted = f", coef_={tuple(self.coef_.shape)}" if hasattr(self, "coef_") else ""
        return f"LinearProbes(kind={self.kind!r}, C={self.C}{fitted})"

    # ----- fitting -----
    def fit(self, X: Float[Tensor, "n *batch d"], y: Any) -> "LinearProbes":
        X, y = check_xy(X, y)
        n, batch, d = X.shape[0], X.shape[1:-1], X.shape[-1]
        Xb = X.reshape(n, -1, d).transpose(0, 1)  # [b, n, d]
        if self.kind == "mass_mean":
            mu0, mu1 = class_means(X.reshape(n, -1, d), y)  # [b, d] each
            w = mu1 - mu0
            b = -(w * (mu0 + mu1)).sum(-1) / 2
            self.n_iter_, self.converged_ = 0, torch.ones(w.shape[0], dtype=torch.bool)
        else:
            # probes per chunk: their data small enough to stay in the CPU's cache through the passes of every
            # Newton iteration (each chunk also stops when it has converged)
            chunk = max(1, _CHUNK_BYTES // (4 * n * (d + 1)))
            ws, bs, conv, iters = [], [], [], 0
            for start in range(0, Xb.shape[0], chunk):
                w_, b_, it, c_ = fit_logistic(Xb[start:start + chunk], y, self.C, self.max_iter, self.tol)
                ws.append(w_)
                bs.append(b_)
                conv.append(c_)
                iters = max(iters, it)
            w, b = torch.cat(ws), torch.cat(bs)
            self.n_iter_, self.converged_ = iters, torch.cat(conv).reshape(batch).cpu()
        self.coef_ = w.reshape(*batch, d).float()
        self.intercept_ = b.reshape(batch).float()
        layers = list(range(batch[0])) if len(batch) else None
        self.provenance_ = fit_provenance(f"{self.kind}_probe", X, y, self.provenance, C=self.C,
                                       **({"layers": layers} if layers is not None else {}))
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise InterpError("these probes are not fitted yet; call fit(X, y) or LinearProbes.load(dir)")

    @property
    def layers(self) -> list[int] | None:
        self._check_fitted()
        return self.provenance_.get("layers")

    # ----- prediction -----
    def decision_function(self, X: Float[Tensor, "n *batch d"]) -> Float[Tensor, "n *batch"]:
        """w . x + b for every example and probe, in X's dtype and on X's device (differentiable)."""
        self._check_fitted()
        if not isinstance(X, Tensor):
            raise InterpError(f"X must be a torch.Tensor, got {type(X).__name__}")
        if X.ndim != self.coef_.ndim + 1 or X.shape[1:] != self.coef_.shape:
            raise InterpError(f"X has shape {tuple(X.shape)}; these probes expect [n, {', '.join(map(str, self.coef_.shape))}]")
        dtype = X.dtype if X.is_floating_point() else torch.float32
        w = self.coef_.to(X.device, dtype).reshape(-1, X.shape[-1])
        b = self.intercept_.to(X.device, dtype).reshape(-1)
        z = torch.einsum("nbd,bd->nb", X.to(dtype).reshape(X.shape[0], -1, X.shape[-1]), w) + b
        return z.reshape(X.shape[:-1])

    def predict_proba(self, X: Float[Tensor, "n *batch d"]) -> Float[Tensor, "n *batch"]:
        """P(class 1) per example and probe (not scikit-learn's [n, 2]: the positive column only)."""
        return torch.sigmoid(self.decision_function(X))

    def predict(self, X: Float[Tensor, "n *batch d"]) -> Tensor:
        """Predicted labels 0/1 (long) per example and probe."""
        return (self.decision_function(X) > 0).long()

    def score(self, X: Float[Tensor, "n *batch d"], y: Any) -> Float[Tensor, "*batch"]:
        """Accuracy of every probe on (X, y)."""
        self._check_fitted()
        X, yb = check_xy(X, y, both_classes=False)
        pred = self.decision_function(X) > 0
        yb = yb.view(-1, *([1] * (pred.ndim - 1)))
        return (pred == yb).float().mean(0).cpu()

    # ----- persistence -----
    def check_for(self, model: "Model") -> None:
        """Raise InterpError unless these probes fit `model` (identity, width, layers)."""
        self._check_fitted()
        fp = self.provenance_.get("model")
        if isinstance(fp, dict) and fp:
            model.check_compatible(fp, "these probes")
        heads = self.coef_.ndim == 3
        width, expected = self.coef_.shape[-1], (model.d_head if heads else model.d_model)
        if width != expected:
            raise InterpError(f"probes of width {width}, model has {'d_head' if heads else 'd_model'} {expected}: "
                              "they were fitted on another model")
        if heads and self.coef_.shape[1] != model.n_heads:
            raise InterpError(f"probes for {self.coef_.shape[1]} heads, model has {model.n_heads} heads")
        for layer in self.layers or []:
            model.check_layer(layer, "a probe layer")

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `probes.safetensors` (coef, intercept) and `probes.json` (kind, C, shape, layers, provenance)."""
        self._check_fitted()
        directory = Path(directory)
        write_tensors(directory / TENSORS, {"coef": self.coef_, "intercept": self.intercept_})
        write_json(directory / META, {
            "format": FORMAT, "kind": self.kind, "C": self.C, "max_iter": self.max_iter, "tol": self.tol,
            "shape": list(self.coef_.shape), "layers": self.layers, "model": self.provenance_.get("model"),
            "n_iter": self.n_iter_, "converged": bool(torch.as_tensor(self.converged_).all()), "provenance": self.provenance_,
        })
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, model: "Model | None" = None) -> "LinearProbes":
        """Load saved probes; with `model`, refuse probes fitted on another model."""
        directory = Path(directory)
        meta = read_meta(directory, META, TENSORS, FORMAT, "probes")
        shape, prov = meta.get("shape"), meta.get("provenance")
        if not isinstance(shape, list) or not shape or not isinstance(prov, dict) or meta.get("kind") not in KINDS:
            raise InterpError(f"{directory / META} lacks a valid 'shape', 'kind' or 'provenance'; the file is corrupt")
        tensors = read_tensors(directory / TENSORS)
        if "coef" not in tensors or "intercept" not in tensors:
            raise InterpError(f"{directory / TENSORS} lacks 'coef' or 'intercept' (has {sorted(tensors)}); it is not a probes file")
        coef, intercept = tensors["coef"], tensors["intercept"]
        if list(coef.shape) != shape or list(intercept.shape) != shape[:-1]:
            raise InterpError(f"{directory / TENSORS} holds coef {tuple(coef.shape)} and intercept {tuple(intercept.shape)} "
                              f"but {META} says {shape}; the two files do not belong together")
        if not (torch.isfinite(coef).all() and torch.isfinite(intercept).all()):
            raise InterpError(f"{directory / TENSORS} contains NaN or inf; the stored probes are corrupt, fit them again")
        out = cls(meta["kind"], C=meta.get("C", 1.0), max_iter=meta.get("max_iter", 100), tol=meta.get("tol", 1e-4))
        out.coef_, out.intercept_, out.provenance_ = coef.float(), intercept.float(), prov
        out.n_iter_, out.converged_ = meta.get("n_iter", 0), torch.tensor(bool(meta.get("converged", True)))
        if model is not None:
            out.check_for(model)
        return out


# ----- evaluation -----
def stratified_split(y: Tensor, test_size: float, seed: int) -> tuple[Tensor, Tensor]:
    """Train and test row indices with each class split in the same proportion (at least one of each class in
    each part)."""
    if not 0 < test_size < 1:
        raise InterpError(f"test_size must be a fraction in (0, 1), got {test_size!r}")
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for cls_ in (False, True):
        rows = (y.cpu() == cls_).nonzero().flatten()
        if len(rows) < 2:
            raise InterpError(f"class {int(cls_)} has {len(rows)} example(s); a train/test split needs at least 2 per class")
        rows = rows[torch.randperm(len(rows), generator=gen)]
        k = min(max(round(test_size * len(rows)), 1), len(rows) - 1)
        test.append(rows[:k])
        train.append(rows[k:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


@dataclass
class ProbeReport:
    """Train and test accuracy per layer (per layer and head for [n, L, H, d] input) for each probe kind."""

    kinds: list[str]
    layers: list[int]
    train_accuracy: dict[str, list]
    test_accuracy: dict[str, list]
    n_train: int
    n_test: int
    chance: float  # accuracy of always guessing the majority class of the test split
    test_size: float
    seed: int
    probes: dict[str, LinearProbes] = field(default_factory=dict, repr=False)  # fitted on the train split

    def best_layer(self, kind: str = "logistic") -> int:
        """The layer with the highest test accuracy (the earliest, on ties)."""
        if kind not in self.test_accuracy:
            raise InterpError(f"no {kind!r} probes in this report; it has {', '.join(self.kinds)}")
        acc = torch.tensor(self.test_accuracy[kind])
        per_layer = acc if acc.ndim == 1 else acc.amax(-1)
        return self.layers[int(per_layer.argmax())]

    def to_dict(self) -> dict:
        return {"kinds": self.kinds, "layers": self.layers, "train_accuracy": self.train_accuracy,
                "test_accuracy": self.test_accuracy, "n_train": self.n_train, "n_test": self.n_test,
                "chance": self.chance, "test_size": self.test_size, "seed": self.seed}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def figure(self) -> "go.Figure":
        from probes.plots import accuracy_figure

        return accuracy_figure(self)


def evaluate(X: Float[Tensor, "n *batch d"], y: Any, test_size: float = 0.25, seed: int = 0,
             kinds: Sequence[str] = KINDS, C: float = 1.0, layers: Sequence[int] | None = None,
             provenance: dict | None = None) -> ProbeReport:
    """Fit each kind of probe on a stratified train split and report per-layer train/test accuracy.

    X is [n, L, d] (or [n, L, H, d]); `layers` names the L layers (default 0..L-1) for the report and figure.
    """
    X, yb = check_xy(X, y)
    if X.ndim < 3:
        X = X[:, None]
    kinds = list(kinds)
    for k in kinds:
        if k not in KINDS:
            raise InterpError(f"unknown probe kind {k!r}; use one of {', '.join(KINDS)}")
    layers = list(range(X.shape[1])) if layers is None else list(layers)
    if len(layers) != X.shape[1]:
        raise InterpError(f"{len(layers)} layer names for {X.shape[1]} layers in X")
    train, test = stratified_split(yb, test_size, seed)
    train, test = train.to(X.device), test.to(X.device)
    ytest = yb[test]
    chance = max(float(ytest.float().mean()), 1 - float(ytest.float().mean()))
    report = ProbeReport(kinds, layers, {}, {}, len(train), len(test), chance, test_size, seed)
    for kind in kinds:
        probe = LinearProbes(kind, C=C, provenance={"layers": layers, **(provenance or {})}).fit(X[train], yb[train])
        report.probes[kind] = probe
        report.train_accuracy[kind] = probe.score(X[train], yb[train]).tolist()
        report.test_accuracy[kind] = probe.score(X[test], ytest).tolist()
    return report
