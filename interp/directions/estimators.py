"""Estimators that turn labelled activations into directions and subspaces.

Two ways to find "the" direction that separates a positive class (label 1: harmful, say) from a negative one:

- `DiffInMeans`: the difference of the class means, mu1 - mu0. Arditi et al. (2024) find the refusal direction
  this way; it is the maximum-likelihood direction when the classes share an isotropic noise, is cheap and has
  no hyper-parameter.
- `PCADirections`: the top-k principal components of class differences: paired differences x1_i - x0_i when
  the data comes in contrastive pairs, else each example's difference from the other class's mean. The PCA is
  uncentred: the consistent shift between the classes is the signal, and centring would remove it (Zou et al.'s
  representation reading flips pair order at random for the same reason). k > 1 gives a subspace.

A third, the normalised weight of a logistic-regression probe, is `probes.ProbeDirection`: it needs the probes
package, which builds on this core (the core never imports it).

All follow scikit-learn: parameters in the constructor, `fit(X, y)` returns self, learned state ends in `_`.
X is a tensor [n, ..., d]; any dims between n and d (positions, layers) are batch dims, so one call fits a
direction per (position, layer). y is bool or 0/1 (list or tensor), positive class = 1. The fitted `Direction`
or `Subspace` carries provenance: method, a hash of the data, class counts, and any `provenance=` extras
(model fingerprint, site, layer, position) the caller passes. A direction's `scale` is the class separation
along it, (mu1 - mu0) . v, in activation units: what addition steering adds.

Two helpers here are the only ones of their kind in interp, probes and analyses: `class_means` (the two class
means, float64) and `pca` (top-k principal components, centred or not, batched).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from interp.core.subspace import Direction, Subspace
from interp.errors import InterpError


def check_xy(X: Any, y: Any, what: str = "X", both_classes: bool = True) -> tuple[Float[Tensor, "n *rest"], Bool[Tensor, "n"]]:
    """Validate activations X [n, ..., d] and binary labels y [n]; return X (floating) and y as a bool tensor.
    Fitting needs both classes; scoring (`both_classes=False`) does not."""
    if not isinstance(X, Tensor):
        try:
            X = torch.as_tensor(X)
        except (TypeError, ValueError, RuntimeError) as e:
            raise InterpError(f"{what} must be a tensor of activations [n, ..., d], got {type(X).__name__}") from e
    if X.ndim < 2:
        raise InterpError(f"{what} must be [n, ..., d] (n examples of width d), got shape {tuple(X.shape)}")
    if X.shape[0] == 0 or X.shape[-1] == 0:
        raise InterpError(f"{what} is empty (shape {tuple(X.shape)}); give at least one example of each class")
    if not X.is_floating_point():
        X = X.float()
    if not torch.isfinite(X.sum()) and not torch.isfinite(X).all():  # a finite sum: every entry is finite
        raise InterpError(f"{what} contains NaN or inf; the activations are broken (overflow in half precision?)")
    if isinstance(y, Tensor):
        yt = y.detach().cpu()
    else:
        try:
            yt = torch.as_tensor(list(y))
        except (TypeError, ValueError, RuntimeError) as e:
            raise InterpError(f"y must be a list or tensor of 0/1 or bool labels, got {type(y).__name__}") from e
    if yt.ndim != 1:
        raise InterpError(f"y must be one label per example (1-D), got shape {tuple(yt.shape)}")
    if len(yt) != X.shape[0]:
        raise InterpError(f"got {len(yt)} labels for {X.shape[0]} examples; give one label per row of {what}")
    if yt.dtype != torch.bool:
        if yt.is_complex() or not ((yt == 0) | (yt == 1)).all():
            bad = sorted({str(v) for v in yt.tolist() if v not in (0, 1)})[:5]
            raise InterpError(f"y must be bool or 0/1 (positive class = 1), got values {bad}")
        yt = yt == 1
    n1 = int(yt.sum())
    if both_classes and (n1 == 0 or n1 == len(yt)):
        raise InterpError(f"y has only one class ({'all positive' if n1 else 'all negative'}); both classes are needed")
    return X, yt.to(X.device)


def fit_provenance(method: str, X: Tensor, y: Tensor, extra: dict | None, **more: Any) -> dict:
    """Computed provenance first; the caller's extras (model, site, layer, position, a prompt hash) override it."""
    if extra is not None and not isinstance(extra, dict):
        raise InterpError(f"provenance must be a dict, got {type(extra).__name__}")
    return {"method": method, "data_hash": Subspace.data_hash(X, y), "n_positive": int(y.sum()),
            "n_negative": int((~y).sum()), **more, **(extra or {})}


def slice_at(t: Tensor, index: Sequence[int], batch_shape: torch.Size, what: str) -> Tensor:
    """The slice `t[index]` of a batched fit (batch shape `batch_shape`), with a clear error for a bad index."""
    if len(index) != len(batch_shape):
        raise InterpError(f"{what} was fitted with batch shape {tuple(batch_shape)}; give {len(batch_shape)} indices, got {tuple(index)}")
    for i, (ix, size) in enumerate(zip(index, batch_shape)):
        if not -size <= ix < size:
            raise InterpError(f"index {ix} is out of range for batch dim {i} of size {size}")
    return t[tuple(index)]


def class_means(X: Float[Tensor, "n *rest"], y: Bool[Tensor, "n"]) -> tuple[Float[Tensor, "*rest"], Float[Tensor, "*rest"]]:
    """The means of class 0 and of class 1 (y bool, or 0/1) over the first dim, in float64: the small difference
    of two large activation means keeps its digits. The one class-mean helper of interp, probes and analyses."""
    y = torch.as_tensor(y, device=X.device).bool()
    Xf = X.to(torch.float64)
    return Xf[~y].mean(0), Xf[y].mean(0)


@dataclass
class PCA:
    """Principal components of the rows of X (see `pca`); every field is float64, per batch slice.

    `mean` [*batch, d] (zeros when uncentred), `components` [*batch, k, d] (orthonormal rows, by decreasing
    singular value), `singular_values` [*batch, k], `explained_variance_ratio` [*batch, k] (share of the total
    second moment about `mean`)."""

    mean: Tensor
    components: Tensor
    singular_values: Tensor
    explained_variance_ratio: Tensor

    def transform(self, X: Float[Tensor, "n *batch d"]) -> Float[Tensor, "n *batch k"]:
        """Coordinates of X's rows on the components, after subtracting `mean`."""
        return torch.einsum("n...d,...kd->n...k", X.to(torch.float64) - self.mean, self.components)


def pca(X: Float[Tensor, "n *batch d"], k: int, center: bool = True) -> PCA:
    """Top-k principal components of the n rows of X, one PCA per slice of the dims between n and d, by SVD in
    float64. center=False gives the uncentred PCA (the second moment about 0), which `PCADirections` uses.
    The one PCA helper of interp, probes and analyses (figures included)."""
    n, d = X.shape[0], X.shape[-1]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= min(n, d):
        raise InterpError(f"k={k!r} principal components asked for, but {n} rows of width {d} give 1 to {min(n, d)}")
    Xf = X.to(torch.float64)
    mean = Xf.mean(0) if center else torch.zeros_like(Xf[0])
    _, s, vh = torch.linalg.svd((Xf - mean).movedim(0, -2), full_matrices=False)  # [*batch, n, d] -> vh [*batch, r, d]
    ratio = s**2 / (s**2).sum(-1, keepdim=True).clamp(min=torch.finfo(torch.float64).tiny)
    return PCA(mean, vh[..., :k, :], s[..., :k], ratio[..., :k])


@dataclass
class DiffInMeans:
    """Difference-in-means direction mu1 - mu0 (positive minus negative class).

    normalize: `directions_` holds unit vectors (True) or the raw mean differences (False). The `Direction`
    objects are always unit vectors whose `scale` is ||mu1 - mu0||.

    Learned: `means_` [2, ..., d] (class 0, class 1), `mean_diff_` [..., d], `directions_` [..., d], and for
    X [n, d] `direction_` (a Direction). For batched X use `direction_at(*index, **provenance)`.
    """

    normalize: bool = True
    provenance: dict | None = None

    def fit(self, X: Float[Tensor, "n *batch d"], y: Any) -> "DiffInMeans":
        X, y = check_xy(X, y)
        mu0, mu1 = class_means(X, y)
        diff = mu1 - mu0
        norms = diff.norm(dim=-1, keepdim=True)
        if (norms == 0).any():
            raise InterpError("the two classes have identical means (in some slice): there is no direction between them")
        self.means_ = torch.stack([mu0, mu1]).float()
        self.mean_diff_ = diff.float()
        self.directions_ = (diff / norms).float() if self.normalize else diff.float()
        self.batch_shape_ = X.shape[1:-1]
        self.provenance_ = fit_provenance("diff_in_means", X, y, self.provenance)
        if X.ndim == 2:
            self.direction_ = self.direction_at()
        return self

    def direction_at(self, *index: int, **provenance: Any) -> Direction:
        """The Direction of one batch slice (e.g. `direction_at(pos, layer, layer=layer, position=pos)`)."""
        v = slice_at(self.mean_diff_, index, self.batch_shape_, "DiffInMeans")
        extra = {"index": list(index)} if index else {}
        return Direction.from_vector(v, {**self.provenance_, **extra, **provenance})


@dataclass
class PCADirections:
    """Top-k principal components of class differences (uncentred PCA), sign-fixed to point from class 0 to 1.

    paired=True: differences x1_i - x0_i of the i-th positive and i-th negative example (in order; the class
    counts must be equal). paired=False: every positive example minus the negative mean, and the positive mean
    minus every negative example.

    Learned: `components_` [..., k, d], `singular_values_` [..., k], `explained_variance_ratio_` [..., k]
    (share of the differences' total second moment), `mean_diff_` [..., d], and for X [n, d] `subspace_`
    (a Direction when k == 1). For batched X use `subspace_at(*index, **provenance)`.
    """

    k: int = 1
    paired: bool = False
    provenance: dict | None = None

    def fit(self, X: Float[Tensor, "n *batch d"], y: Any) -> "PCADirections":
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise InterpError(f"k must be a positive integer, got {self.k!r}")
        X, y = check_xy(X, y)
        x1, x0 = X[y].to(torch.float64), X[~y].to(torch.float64)
        mu0, mu1 = class_means(X, y)
        if self.paired:
            if len(x1) != len(x0):
                raise InterpError(f"paired=True needs as many positive as negative examples, got {len(x1)} and {len(x0)}")
            diffs = x1 - x0
        else:
            diffs = torch.cat([x1 - mu0, mu1 - x0])
        m, d = diffs.shape[0], diffs.shape[-1]
        if self.k > min(m, d):
            raise InterpError(f"k={self.k} components asked for, but {m} differences of width {d} give at most {min(m, d)}")
        fitted = pca(diffs, self.k, center=False)
        comps = fitted.components
        diff = mu1 - mu0
        sign = torch.sign((comps * diff[..., None, :]).sum(-1, keepdim=True))
        comps = comps * torch.where(sign == 0, torch.ones_like(sign), sign)
        self.components_ = comps.float()
        self.singular_values_ = fitted.singular_values.float()
        self.explained_variance_ratio_ = fitted.explained_variance_ratio.float()
        self.mean_diff_ = diff.float()
        self.batch_shape_ = X.shape[1:-1]
        self.provenance_ = fit_provenance("pca_paired" if self.paired else "pca", X, y, self.provenance, k=self.k)
        if X.ndim == 2:
            self.subspace_ = self.subspace_at()
        return self

    def subspace_at(self, *index: int, **provenance: Any) -> Subspace:
        """The Subspace (Direction when k == 1) of one batch slice."""
        comps = slice_at(self.components_, index, self.batch_shape_, "PCADirections")
        prov = {**self.provenance_, **({"index": list(index)} if index else {}), **provenance}
        if self.k == 1:
            diff = slice_at(self.mean_diff_, index, self.batch_shape_, "PCADirections")
            return Direction.from_vector(comps[0], prov, scale=float(diff @ comps[0]))
        return Subspace(comps, prov)
