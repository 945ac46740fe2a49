"""`Subspace` and `Direction`: an orthonormal basis of a few directions in a model's residual stream, with where
it came from.

Most of what the library finds (a refusal direction, the span of a probe family, an acceptance subspace) is a
k-dimensional linear subspace of the d-dimensional activation space. It is stored as k orthonormal rows B
(k x d, float32), so that

    projection   P(x) = x B^T B        (the component of x inside the subspace)
    ablation     A(x) = x - P(x)       (directional ablation, Arditi et al. 2024, for k = 1)
    coordinates  c(x) = x B^T          (k numbers per vector)

work on activations of any leading shape, dtype and device. Two subspaces are compared by their principal
angles (Bjorck and Golub 1973) and by the mean squared overlap ||B1 B2^T||_F^2 / min(k1, k2), which is 1 for
nested subspaces and 0 for orthogonal ones. For random subspaces the overlap is not 0 but about max(k1, k2) / d,
so `random_overlap` gives the baseline to read an overlap against.

A subspace carries `provenance`: the fingerprint of the model, the site, layer and position it was fitted at,
the method and a hash of the data. `check_for(model)` and `load(dir, model=...)` use it to refuse a direction
fitted on another model, so that a direction never silently meets a stream of another width (or of another
model of the same width).
Files are a safetensors tensor (`basis`) plus a JSON sidecar, both written atomically; nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp.core.sites import HEAD_KINDS
from interp.errors import InterpError
from interp.io import read_meta, read_tensors, write_json, write_tensors

if TYPE_CHECKING:
    from interp.core.model import Model

TENSORS = "subspace.safetensors"
META = "subspace.json"
FORMAT = "interp.core.subspace/1"
_ORTHO_TOL = 1e-5  # rows already orthonormal to this tolerance are kept exactly as given
_RANK_TOL = 1e-6  # smallest / largest singular value below this: the rows do not span k dimensions


def _as_tensor(x: Any, what: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as e:
        raise InterpError(f"{what} must be a tensor (or array) of numbers, got {type(x).__name__}") from e


def orthonormalise(basis: Tensor, what: str = "basis") -> Float[Tensor, "k d"]:
    """Orthonormal rows spanning the same space as `basis` rows, by QR in float64.

    QR (Gram-Schmidt) keeps the meaning of the rows: row i of the result is the part of row i orthogonal to the
    rows before it, pointing the same way, so the first row keeps its direction and sign. Raises InterpError on
    NaN/inf, zero rows and rank deficiency. Rows that are already orthonormal are returned unchanged.
    """
    b = _as_tensor(basis, what)
    if b.ndim != 2:
        raise InterpError(f"{what} must be a 2-D [k, d] tensor of k row vectors, got shape {tuple(b.shape)}"
                          + ("; use Direction.from_vector for one vector" if b.ndim == 1 else ""))
    k, d = b.shape
    if k == 0 or d == 0:
        raise InterpError(f"{what} is empty (shape {tuple(b.shape)}); give at least one row of width >= 1")
    if b.is_complex() or b.dtype == torch.bool:
        raise InterpError(f"{what} must hold real numbers, got dtype {b.dtype}")
    b64 = b.detach().to("cpu", torch.float64)
    if not torch.isfinite(b64).all():
        raise InterpError(f"{what} contains NaN or inf; the direction was computed from broken activations")
    norms = b64.norm(dim=1)
    if (norms == 0).any():
        rows = (norms == 0).nonzero().flatten().tolist()
        raise InterpError(f"{what} row(s) {rows} are zero vectors and span no direction")
    if k > d:
        raise InterpError(f"{what} has {k} rows of width {d}: at most {d} independent directions fit in {d} dimensions")
    if (b64 @ b64.T - torch.eye(k, dtype=torch.float64)).abs().max() <= _ORTHO_TOL:
        return b.detach().to("cpu", torch.float32).clone()
    s = torch.linalg.svdvals(b64 / norms[:, None])
    if s[-1] / s[0] < _RANK_TOL:
        rank = int((s / s[0] >= _RANK_TOL).sum())
        raise InterpError(f"{what} rows are linearly dependent: {k} rows span only {rank} dimensions; drop the redundant rows")
    q, r = torch.linalg.qr(b64.T)  # [d, k], [k, k]
    q = q * torch.sign(torch.diagonal(r))  # positive diagonal: each row keeps the sign of the input row
    return q.T.to(torch.float32).contiguous()


def _basis64(b: Tensor) -> Tensor:
    """Exactly orthonormal float64 rows of the span of `b` (undoes float32 rounding before angle computations)."""
    q, r = torch.linalg.qr(b.to(torch.float64).T)
    return (q * torch.sign(torch.diagonal(r))).T


@dataclass(frozen=True)
class OverlapBaseline:
    """The overlap of a subspace with random subspaces: what "no relation" looks like."""

    mean: float
    std: float
    expected: float  # analytic E[overlap] = max(k1, k2) / d
    n: int
    k: int  # dimension of the random subspaces


class Subspace:
    """An orthonormal k x d basis (float32 rows on CPU) plus its provenance."""

    def __init__(self, basis: Float[Tensor, "k d"], provenance: dict | None = None):
        self.basis: Float[Tensor, "k d"] = orthonormalise(basis)
        if provenance is not None and not isinstance(provenance, dict):
            raise InterpError(f"provenance must be a dict, got {type(provenance).__name__}")
        self.provenance: dict = dict(provenance or {})
        self._cache: dict[tuple, Tensor] = {}

    # ----- shape -----
    @property
    def k(self) -> int:
        return self.basis.shape[0]

    @property
    def d(self) -> int:
        return self.basis.shape[1]

    def __repr__(self) -> str:
        keys = {k: self.provenance[k] for k in ("site", "layer", "position", "method") if k in self.provenance}
        model = self.provenance.get("model", {}).get("name") if isinstance(self.provenance.get("model"), dict) else None
        extra = "".join(f", {k}={v!r}" for k, v in keys.items()) + (f", model={model!r}" if model else "")
        return f"{type(self).__name__}(k={self.k}, d={self.d}{extra})"

    # ----- linear algebra on activations -----
    def _basis_like(self, x: Tensor) -> tuple[Tensor, torch.dtype]:
        """The basis on x's device in a compute dtype (float64 for float64 x, else float32), cached."""
        if not isinstance(x, Tensor):
            raise InterpError(f"expected a torch.Tensor of activations, got {type(x).__name__}")
        if x.ndim == 0 or x.shape[-1] != self.d:
            raise InterpError(f"activations of shape {tuple(x.shape)} do not end in the subspace width d={self.d}; "
                              f"pass [..., {self.d}]")
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        key = (x.device, compute)
        if key not in self._cache:
            self._cache[key] = self.basis.to(device=x.device, dtype=compute)
        return self._cache[key], compute

    def coords(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... k"]:
        """Coordinates x B^T of x in the orthonormal basis."""
        b, compute = self._basis_like(x)
        out = x.to(compute) @ b.T
        return out.to(x.dtype) if x.is_floating_point() else out

    def project(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """The component of x inside the subspace, x B^T B; same shape and (floating) dtype as x."""
        b, compute = self._basis_like(x)
        out = (x.to(compute) @ b.T) @ b
        return out.to(x.dtype) if x.is_floating_point() else out

    def ablate(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """x with its component inside the subspace removed, x - x B^T B (directional ablation)."""
        b, compute = self._basis_like(x)
        xc = x.to(compute)
        out = xc - (xc @ b.T) @ b
        return out.to(x.dtype) if x.is_floating_point() else out

    # ----- comparing subspaces -----
    def _check_other(self, other: "Subspace") -> None:
        if not isinstance(other, Subspace):
            raise InterpError(f"can only compare with another Subspace, got {type(other).__name__}")
        if other.d != self.d:
            raise InterpError(f"cannot compare subspaces of width {self.d} and {other.d}: they live in different models or sites")

    def principal_angles(self, other: "Subspace") -> Float[Tensor, "m"]:
        """The min(k1, k2) principal angles in radians, ascending (0: shared direction, pi/2: orthogonal).

        Cosines are the singular values of B1 B2^T; angles below pi/4 are taken from the sines (singular values of
        the residual of the smaller basis after projecting it onto the larger subspace), which keeps small angles
        accurate where arccos of a number close to 1 would not be.
        """
        self._check_other(other)
        a, b = _basis64(self.basis), _basis64(other.basis)
        if a.shape[0] < b.shape[0]:
            a, b = b, a  # a: the larger subspace
        m = b @ a.T  # [k_small, k_large]
        cos = torch.linalg.svdvals(m).clamp(0, 1)  # descending -> ascending angles
        sin = torch.linalg.svdvals(b - m @ a).clamp(0, 1).flip(0)  # ascending -> ascending angles
        return torch.where(cos**2 >= 0.5, torch.arcsin(sin), torch.arccos(cos))

    def overlap(self, other: "Subspace") -> float:
        """Mean squared overlap ||B1 B2^T||_F^2 / min(k1, k2): 1 when one contains the other, 0 when orthogonal."""
        self._check_other(other)
        m = _basis64(self.basis) @ _basis64(other.basis).T
        return float((m**2).sum() / min(self.k, other.k))

    def random_overlap(self, n: int = 200, seed: int = 0, k: int | None = None) -> OverlapBaseline:
        """Overlap of this subspace with `n` uniformly random k-dimensional subspaces (k defaults to self.k).

        The analytic expectation is k1 * k2 / d / min(k1, k2) = max(k1, k2) / d; the empirical mean and std say how
        far above chance an observed overlap is.
        """
        k = self.k if k is None else k
        if not isinstance(n, int) or n < 2:
            raise InterpError(f"n must be an integer >= 2 random subspaces, got {n!r}")
        if not isinstance(k, int) or not 1 <= k <= self.d:
            raise InterpError(f"k must be an integer in 1..{self.d}, got {k!r}")
        gen = torch.Generator().manual_seed(seed)
        g = torch.randn(n, self.d, k, generator=gen, dtype=torch.float64)
        q, _ = torch.linalg.qr(g)  # [n, d, k]: orthonormal columns, Haar-distributed span
        m = _basis64(self.basis) @ q  # [n, k_self, k]
        vals = (m**2).sum((1, 2)) / min(self.k, k)
        return OverlapBaseline(float(vals.mean()), float(vals.std()), max(self.k, k) / self.d, n, k)

    # ----- provenance -----
    def check_for(self, model: "Model") -> None:
        """Raise InterpError unless this subspace can be used with `model` (width, model identity, layer). One fitted
        at a site narrower or wider than the residual stream (provenance "site" at `mlp.hook_post` or a head) is
        checked for its width where it is patched (`interp.core.interventions.check_subspace`)."""
        what = "direction" if self.k == 1 else f"subspace (k={self.k})"
        site = self.provenance.get("site")
        kind = site.split(".", 2)[-1] if isinstance(site, str) else None
        native = isinstance(site, str) and site.endswith((".input", ".output"))  # width checked where it is used
        if self.d != model.d_model and kind not in ("mlp.hook_post", *HEAD_KINDS) and not native:
            raise InterpError(f"{what} of width {self.d}, model has d_model {model.d_model}: it was fitted on another model")
        fp = self.provenance.get("model")
        if isinstance(fp, dict) and fp:
            model.check_compatible(fp, f"this {what}")
        layer = self.provenance.get("layer")
        layers = layer if isinstance(layer, (list, tuple)) else [layer] if layer is not None else []
        for lay in layers:
            model.check_layer(lay, f"the layer of this {what}")

    def layer_for(self, model: "Model", layer: int | None = None, option: str = "layer=") -> int:
        """The one layer to act at: `layer` when given, else the layer in the provenance. Never a silent default:
        a subspace that names no single layer (made by hand, or fitted across layers) needs `layer` (`option`)."""
        chosen = self.provenance.get("layer") if layer is None else layer
        if chosen is None or isinstance(chosen, (list, tuple)):
            what = "direction" if self.k == 1 else f"subspace (k={self.k})"
            has = "no layer" if chosen is None else f"several layers {list(chosen)}"
            raise InterpError(f"this {what} carries {has} in its provenance; say where to act with {option}L "
                              f"(L in 0..{model.n_layers - 1})")
        return model.check_layer(chosen, f"the layer of this {'direction' if self.k == 1 else 'subspace'}")

    @staticmethod
    def data_hash(*items: Any) -> str:
        """A short sha256 (16 hex digits) of tensors, prompt lists or other JSON-able data, for provenance."""
        h = hashlib.sha256()
        for item in items:
            if isinstance(item, Tensor):
                t = item.detach().cpu().contiguous()
                h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
            else:
                h.update(b"J" + json.dumps(item, sort_keys=True, default=str).encode())
        return h.hexdigest()[:16]

    # ----- persistence -----
    def save(self, directory: str | os.PathLike) -> Path:
        """Write `subspace.safetensors` (the basis) and `subspace.json` (shape + provenance), each atomically."""
        directory = Path(directory)
        write_tensors(directory / TENSORS, {"basis": self.basis})
        write_json(directory / META, {"format": FORMAT, "kind": "direction" if self.k == 1 else "subspace",
                                      "k": self.k, "d": self.d, "provenance": self.provenance})
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, model: "Model | None" = None) -> "Subspace":
        """Load a saved subspace (a `Direction` when k == 1); with `model`, refuse one that does not fit it."""
        directory = Path(directory)
        meta = read_meta(directory, META, TENSORS, FORMAT, "subspace")
        k, d = meta.get("k"), meta.get("d")
        if not isinstance(k, int) or not isinstance(d, int) or not isinstance(meta.get("provenance", {}), dict):
            raise InterpError(f"{directory / META} lacks integer 'k' and 'd' or has a non-dict provenance; the file is corrupt")
        tensors = read_tensors(directory / TENSORS)
        if "basis" not in tensors:
            raise InterpError(f"{directory / TENSORS} has no 'basis' tensor (has {sorted(tensors)}); it is not a subspace file")
        basis = tensors["basis"]
        if tuple(basis.shape) != (k, d):
            raise InterpError(f"{directory / TENSORS} holds a basis of shape {tuple(basis.shape)} but {META} says "
                              f"[{k}, {d}]; the two files do not belong together")
        if not torch.isfinite(basis).all():
            raise InterpError(f"{directory / TENSORS} contains NaN or inf; the stored basis is corrupt, fit it again")
        out = (Direction if k == 1 else Subspace)(basis, meta.get("provenance", {}))
        if model is not None:
            out.check_for(model)
        return out


class Direction(Subspace):
    """A rank-1 subspace: one unit vector, plus `scale`, the length of the raw vector it came from
    (for diff-in-means: the norm of the mean difference, which addition steering adds back)."""

    def __init__(self, basis: Float[Tensor, "d"] | Float[Tensor, "1 d"], provenance: dict | None = None):
        b = _as_tensor(basis, "direction")
        if b.ndim == 1:
            b = b[None]
        if b.ndim != 2 or b.shape[0] != 1:
            raise InterpError(f"a Direction is one vector [d] (or [1, d]), got shape {tuple(b.shape)}; use Subspace for k > 1")
        super().__init__(b, provenance)

    @property
    def vector(self) -> Float[Tensor, "d"]:
        return self.basis[0]

    @property
    def scale(self) -> float | None:
        s = self.provenance.get("scale")
        return float(s) if s is not None else None

    @classmethod
    def from_vector(cls, v: Float[Tensor, "d"], provenance: dict | None = None, scale: float | None = None) -> "Direction":
        """The unit direction of `v`; `scale` defaults to provenance['scale'], else the norm of `v`."""
        v = _as_tensor(v, "vector")
        if v.ndim != 1:
            raise InterpError(f"from_vector takes one vector of shape [d], got shape {tuple(v.shape)}")
        out = cls(v, provenance)
        if scale is None:
            scale = out.provenance.get("scale", float(v.detach().to("cpu", torch.float64).norm()))
        if not math.isfinite(float(scale)):
            raise InterpError(f"scale must be a finite number, got {scale!r}")
        out.provenance["scale"] = float(scale)
        return out
