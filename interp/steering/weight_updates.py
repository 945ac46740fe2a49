"""Weight updates between three checkpoints, and the projections of Ponkshe et al.'s parameter-space study.

*Safety Subspaces are Not (Linearly) Distinct: A Fine-Tuning Case Study* (Ponkshe et al., ICLR 2026; reference
code github.com/CERT-Lab/safety-subspaces, `utils/post_processing_subspace.py`). Three checkpoints of one
architecture: a base model, the aligned model made from it (safety training), and a model fine-tuned from the
aligned one. For every weight matrix W (same name and shape in all three)

    V = W_aligned - W_base          the alignment update
    U = W_finetuned - W_aligned     the fine-tune update

and P, the top-k left singular vectors of V (an m x k orthonormal basis of the output space that alignment wrote
into most). If safety lived in a subspace of its own, the part of U inside P would be what erodes it and the part
outside would be harmless. The paper tests this with three edited checkpoints:

    same        W_aligned + P P^T U           only the fine-tune's component inside the alignment subspace
    opposite    W_aligned - P P^T U           that component reversed (nothing of the rest of U is added)
    orthogonal  W_aligned + (U - P P^T U)     the fine-tune with its alignment-subspace component removed

(the definitions of the reference's `same`, `opp` and `orth`). The energy of U inside P, ||P P^T U||^2 / ||U||^2,
says how much of the fine-tune falls into the alignment subspace; a k-dimensional subspace drawn at random (Haar)
holds k/m of any fixed U's energy on average, the closed-form baseline beside which it is read, and one random
draw per matrix gives a sampled baseline. `overlap` is the mean squared overlap (`Subspace.overlap`) of the top-k
left singular subspaces of V and of U, whose random baseline is also k/m.

What is faithful, and what departs:
- k per matrix: `Rank(fraction=f)` is the reference's `frac`, k = max(1, round(f * min(m, n))); `Rank(k=K)` uses
  the same K for every matrix. k larger than min(m, n), or than the numerical rank of V (numpy's `matrix_rank`
  tolerance on the singular values), is an error naming the matrix: singular vectors beyond the rank are
  arbitrary directions. k = 0 keeps no direction (same = opposite = aligned, orthogonal = fine-tuned).
- P comes from `torch.svd_lowrank` in float32, seeded, with q = 2k + `oversample` columns and `niter` = 6 power
  iterations (the reference: q = k, niter = 2). Fine-tune updates have slowly decaying spectra, where the
  reference's setting can land far from the true top-k subspace P* (by ||P P^T - P* P*^T||_F, which is at most
  sqrt(2k)); these defaults come close to it.
  Where q would reach min(m, n) the randomized method gains nothing, and the exact SVD (`torch.linalg.svd`) is used.
- A matrix that alignment left exactly unchanged (V = 0) has no alignment subspace: it is skipped (P is empty)
  and listed in `unchanged`, rather than failing on a rank of 0.
- Parameters that are not matrices (norm weights, biases) follow the reference: the fine-tune's part along the
  line of V, (<U, V> / <V, V>) V, plays the role of P P^T U. Tied weights (an unembedding tied to the
  embedding) are one parameter and are counted once.
- Energies are sums over the matrices only (the reference's `energy_kept_ratio` also counts the vectors).
- Checkpoints are written in float32 (the reference casts back to float16), with the fine-tuned checkpoint's
  config and tokenizer, atomically (`interp.steering.orthogonalize.write_checkpoint`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from interp.core.subspace import Subspace
from interp.errors import InterpError
from interp.steering.orthogonalize import write_checkpoint

if TYPE_CHECKING:
    from interp.core.model import Model

METHODS = ("same", "opposite", "orthogonal")
SIDECAR = "interp_projection.json"


@dataclass(frozen=True)
class Rank:
    """How many directions of V to keep in each matrix: `k` (the same number everywhere) or `fraction` of
    min(m, n) (the reference's `frac`). Exactly one of the two."""

    k: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.k is None) == (self.fraction is None):
            raise InterpError("give exactly one of k (directions per matrix) and fraction (of min(m, n))")
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 0):
            raise InterpError(f"k must be a non-negative integer, got {self.k!r}")
        if self.fraction is not None and not (isinstance(self.fraction, (int, float)) and 0 < self.fraction <= 1):
            raise InterpError(f"fraction must be in (0, 1], got {self.fraction!r}")

    @property
    def label(self) -> str:
        """A short name for folders and tables: `k8`, `f0.25`."""
        return f"k{self.k}" if self.k is not None else f"f{self.fraction:g}"

    def of(self, name: str, shape: Sequence[int]) -> int:
        """k for a matrix of `shape`; k > min(m, n) is an error naming the matrix."""
        m, n = shape
        if self.fraction is not None:
            return max(1, round(self.fraction * min(m, n)))
        assert self.k is not None  # exactly one of k and fraction (__post_init__)
        if self.k > min(m, n):
            raise InterpError(f"k={self.k} is larger than the rank a {m} x {n} matrix can have ({name}); "
                              f"use k <= {min(m, n)} or a fraction")
        return self.k


# ----- loading and checking -----

def load_weights(source: str | os.PathLike) -> dict[str, Tensor]:
    """Every parameter of a checkpoint (a folder plain transformers loads, a bundled name, a .gguf), float32 on the
    CPU, by name; tied parameters once (under the name transformers gives first)."""
    from interp.core.loading import load

    model = load(source, device="cpu", dtype=torch.float32)
    return {name: p.detach() for name, p in model.hf.named_parameters()}


def check_sources(*sources: str | os.PathLike) -> None:
    """Refuse sources that are neither a bundled name, an HF folder, a .gguf file nor a hub id, before loading."""
    from interp.core.loading import resolve

    for s in sources:
        resolve(s)


def matrices(base: dict[str, Tensor], aligned: dict[str, Tensor], finetuned: dict[str, Tensor]) -> list[str]:
    """The names of the 2-D parameters, after checking that the three checkpoints hold the same parameters with
    the same shapes (a one-line error names the first that differs)."""
    for what, other in (("aligned", aligned), ("fine-tuned", finetuned)):
        if missing := [n for n in base if n not in other]:
            raise InterpError(f"parameter {missing[0]} of the base checkpoint is missing from the {what} one: "
                              "the checkpoints must share one architecture")
        if extra := [n for n in other if n not in base]:
            raise InterpError(f"parameter {extra[0]} of the {what} checkpoint is missing from the base one: "
                              "the checkpoints must share one architecture")
    for name, w in base.items():
        shapes = [tuple(w.shape), tuple(aligned[name].shape), tuple(finetuned[name].shape)]
        if len(set(shapes)) > 1:
            raise InterpError(f"{name} has shape {list(shapes[0])} in the base, {list(shapes[1])} in the aligned and "
                              f"{list(shapes[2])} in the fine-tuned checkpoint: they must be of one architecture")
    return [n for n, w in base.items() if w.ndim == 2]


# ----- the linear algebra of one matrix -----

def _top(V: Float[Tensor, "m n"], k: int, seed: int, oversample: int, niter: int) -> tuple[Tensor, int]:
    """The top-k left singular vectors of V by seeded `torch.svd_lowrank` (the exact SVD where q would reach
    min(m, n)), and V's numerical rank among the singular values computed (those above max(m, n) * eps * s_max,
    numpy's `matrix_rank` rule)."""
    m, n = V.shape
    q = min(2 * k + oversample, min(m, n))
    if q == min(m, n):  # the randomized method would span everything: the exact SVD costs no more
        u, s, _ = torch.linalg.svd(V.float(), full_matrices=False)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            u, s, _ = torch.svd_lowrank(V.float(), q=q, niter=niter)
    tol = float(s[0]) * max(m, n) * torch.finfo(torch.float32).eps
    return u[:, :k], int((s > tol).sum())


def top_left_singular(V: Float[Tensor, "m n"], k: int, seed: int = 0, oversample: int = 10, niter: int = 6,
                      name: str = "the matrix") -> Float[Tensor, "m k"]:
    """The top-k left singular vectors of V (orthonormal columns), by `torch.svd_lowrank` with a fixed seed.

    k = 0 gives an empty [m, 0] basis. k beyond the numerical rank of V is an error naming the matrix: those
    directions would be arbitrary.
    """
    m, n = V.shape
    if k > min(m, n):
        raise InterpError(f"k={k} is larger than the rank a {m} x {n} matrix can have ({name})")
    if k == 0:
        return V.new_zeros(m, 0)
    u, rank = _top(V, k, seed, oversample, niter)
    if rank < k:
        raise InterpError(f"k={k} is larger than the rank of the alignment update of {name} ({rank}); use k <= "
                          f"{rank}: singular directions beyond the rank are arbitrary")
    return u


def project(U: Float[Tensor, "m n"], P: Float[Tensor, "m k"]) -> Float[Tensor, "m n"]:
    """P P^T U: the part of U inside the span of P's orthonormal columns."""
    return P @ (P.T @ U)


def along(U: Tensor, V: Tensor) -> Tensor:
    """The reference's rule for non-matrix parameters: the part of U along the line of V, (<U, V>/<V, V>) V."""
    vv = float((V.double() * V.double()).sum())
    return U * 0 if vv == 0 else V * float((U.double() * V.double()).sum() / vv)


def combine(W_aligned: Tensor, U: Tensor, U_in: Tensor, method: str) -> Tensor:
    """The edited weight of `method` from the aligned weight, the update U and its part U_in inside P."""
    if method == "same":
        return W_aligned + U_in
    if method == "opposite":
        return W_aligned - U_in
    if method == "orthogonal":
        return W_aligned + (U - U_in)
    raise InterpError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")


def random_basis(m: int, k: int, seed: int) -> Float[Tensor, "m k"]:
    """A uniformly (Haar) random k-dimensional subspace of R^m: the QR of a Gaussian matrix."""
    g = torch.randn(m, k, generator=torch.Generator().manual_seed(seed))
    return torch.linalg.qr(g)[0] if k else g


@dataclass
class MatrixStats:
    """One matrix: its k, the energy of U inside the top-k subspace of V beside a random k-subspace (sampled,
    and k/m in expectation), and the mean squared overlap of the top-k subspaces of V and U."""

    name: str
    shape: tuple[int, int]
    k: int
    energy: float  # ||P P^T U||^2 / ||U||^2
    random_energy: float  # the same for one Haar-random k-dim subspace
    expected: float  # k / m: the random subspace's expected energy, and the expected overlap
    overlap: float | None  # Subspace.overlap of top-k(V) and top-k(U); None for k = 0
    u_norm2: float  # ||U||^2, the weight of this matrix in the totals
    v_norm2: float


def matrix_stats(name: str, V: Tensor, U: Tensor, P: Tensor, seed: int, oversample: int, niter: int) -> MatrixStats:
    m, k = P.shape
    u2 = float((U.double() ** 2).sum())
    inside = float((P.T @ U).double().pow(2).sum())
    rand = random_basis(m, k, seed)
    rand_inside = float((rand.T @ U).double().pow(2).sum())
    overlap = None
    if k and u2 > 0:  # the top-k subspace of U (or all of it, where U's rank is below k)
        Pu, rank_u = _top(U, k, seed, oversample, niter)
        overlap = Subspace(P.T).overlap(Subspace(Pu[:, :max(1, min(k, rank_u))].T))
    return MatrixStats(name, (m, U.shape[1]), k, inside / u2 if u2 else 0.0, rand_inside / u2 if u2 else 0.0,
                       k / m, overlap, u2, float((V.double() ** 2).sum()))


# ----- the whole checkpoint -----

@dataclass
class Projection:
    """For one `Rank`: each parameter's U_in (P P^T U for matrices, the line of V for the others), the per-matrix
    statistics, and the matrices alignment left unchanged."""

    rank: Rank
    parts: dict[str, Tensor]
    stats: list[MatrixStats]
    unchanged: list[str]

    def weights(self, aligned: dict[str, Tensor], finetuned: dict[str, Tensor], method: str) -> Iterator[tuple[str, Tensor]]:
        """(name, edited weight) of every parameter for `method`."""
        for name, w_a in aligned.items():
            yield name, combine(w_a, finetuned[name] - w_a, self.parts[name], method)

    def totals(self) -> dict:
        """Energy of U inside the subspaces summed over matrices (sum ||P P^T U||^2 / sum ||U||^2), its random
        baselines, and the mean overlap over matrices."""
        u2 = sum(s.u_norm2 for s in self.stats)
        w = (lambda f: sum(f(s) * s.u_norm2 for s in self.stats) / u2) if u2 else (lambda f: 0.0)
        ov = [s.overlap for s in self.stats if s.overlap is not None]
        return {"energy": w(lambda s: s.energy), "random_energy": w(lambda s: s.random_energy),
                "expected_energy": w(lambda s: s.expected), "mean_overlap": sum(ov) / len(ov) if ov else None,
                "mean_expected_overlap": sum(s.expected for s in self.stats if s.overlap is not None) / len(ov) if ov else None,
                "matrices": len(self.stats), "unchanged": len(self.unchanged)}


@torch.no_grad()
def projection(base: dict[str, Tensor], aligned: dict[str, Tensor], finetuned: dict[str, Tensor], rank: Rank,
               seed: int = 0, oversample: int = 10, niter: int = 6, progress: bool = True) -> Projection:
    """The alignment subspace of every matrix for `rank`, and the fine-tune's part inside it (see the module doc)."""
    names = matrices(base, aligned, finetuned)
    ks = {n: rank.of(n, base[n].shape) for n in names}  # k > min(m, n) fails before any SVD runs
    parts: dict[str, Tensor] = {}
    stats: list[MatrixStats] = []
    unchanged: list[str] = []
    for i, name in enumerate(tqdm(base, desc=f"project {rank.label}", unit="param", disable=not progress)):
        V, U = aligned[name] - base[name], finetuned[name] - aligned[name]
        if name not in ks:
            parts[name] = along(U, V)
            continue
        if not V.any():
            unchanged.append(name)
            parts[name] = torch.zeros_like(U)
            continue
        P = top_left_singular(V, ks[name], seed + i, oversample, niter, name=name)
        parts[name] = project(U, P)
        stats.append(matrix_stats(name, V, U, P, seed + i, oversample, niter))
    return Projection(rank, parts, stats, unchanged)


def check_out(out: str | os.PathLike) -> Path:
    """A checkpoint folder must be new or empty (checked before any work)."""
    from interp.steering.orthogonalize import check_export_dir

    return check_export_dir(out)


@torch.no_grad()
def write_projection(template: "Model", weights: Iterator[tuple[str, Tensor]], out: str | os.PathLike, meta: dict) -> Path:
    """Write `weights` as a checkpoint with `template`'s config and tokenizer (the fine-tuned model, loaded as a
    private copy for writing: its parameters are overwritten here), atomically."""
    params = dict(template.hf.named_parameters())
    for name, w in weights:
        if name not in params or params[name].shape != w.shape:
            raise InterpError(f"{name} does not fit the template checkpoint; write with the fine-tuned checkpoint")
        params[name].copy_(w.to(params[name].dtype))
    return write_checkpoint(template.hf, template.tokenizer, out, SIDECAR, meta)


def stats_rows(stats: Sequence[MatrixStats]) -> list[dict]:
    return [{**asdict(s), "shape": list(s.shape)} for s in stats]


__all__ = ["METHODS", "Rank", "load_weights", "check_sources", "matrices", "top_left_singular", "project", "along",
           "combine", "random_basis", "MatrixStats", "Projection", "projection", "check_out", "write_projection"]
