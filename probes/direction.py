"""`ProbeDirection`: a logistic-regression probe's weight as a direction, in the style of `interp.directions.estimators`.

It lives in `probes` because it fits a `LinearProbes`; the core estimators (`interp.DiffInMeans`,
`interp.PCADirections`) need no probe and stay in `interp`, which never imports this package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jaxtyping import Float
from torch import Tensor

from interp.core.subspace import Direction
from interp.directions.estimators import check_xy, class_means, fit_provenance, slice_at
from interp.errors import InterpError
from probes.linear import LinearProbes


@dataclass
class ProbeDirection:
    """The normalised weight of an L2 logistic-regression probe (scikit-learn's LogisticRegression(C=C) objective
    on raw features; solved by batched Newton in `LinearProbes`). Logistic regression down-weights directions of
    high within-class variance, which the difference of means does not.

    Learned: `probes_` (the fitted LinearProbes), `coef_` [..., d], `intercept_` [...], `directions_` [..., d]
    (unit), and for X [n, d] `direction_`. For batched X use `direction_at(*index, **provenance)`.
    """

    C: float = 1.0
    max_iter: int = 100
    provenance: dict | None = None

    def fit(self, X: Float[Tensor, "n *batch d"], y: Any) -> "ProbeDirection":
        X, y = check_xy(X, y)
        self.probes_ = LinearProbes("logistic", C=self.C, max_iter=self.max_iter).fit(X, y)
        self.coef_ = self.probes_.coef_
        self.intercept_ = self.probes_.intercept_
        norms = self.coef_.norm(dim=-1, keepdim=True)
        if (norms == 0).any():
            raise InterpError("the probe weight is zero (in some slice): the classes are not linearly distinguishable there")
        self.directions_ = self.coef_ / norms
        mu0, mu1 = class_means(X, y)
        self.mean_diff_ = (mu1 - mu0).float()
        self.batch_shape_ = X.shape[1:-1]
        self.provenance_ = fit_provenance("logistic_probe", X, y, self.provenance, C=self.C)
        if X.ndim == 2:
            self.direction_ = self.direction_at()
        return self

    def direction_at(self, *index: int, **provenance: Any) -> Direction:
        """The Direction of one batch slice; its `scale` is the class separation along it."""
        v = slice_at(self.directions_, index, self.batch_shape_, "ProbeDirection")
        diff = slice_at(self.mean_diff_, index, self.batch_shape_, "ProbeDirection")
        prov = {**self.provenance_, **({"index": list(index)} if index else {}), **provenance}
        return Direction.from_vector(v, prov, scale=float(diff @ v))
