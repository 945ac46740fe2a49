"""Weight updates between checkpoints: the projections of Ponkshe et al.'s parameter-space study, and the
update-space comparison of a useful and a harmful fine-tune.

*Safety Subspaces are Not (Linearly) Distinct: A Fine-Tuning Case Study* (Ponkshe et al., ICLR 2026; reference
code github.com/CERT-Lab/safety-subspaces).

**Projections** (`projection`; the reference's `utils/post_processing_subspace.py`, `project_and_compute`).
Three checkpoints of one architecture: a base model, the aligned model made from it (safety training), and a
model fine-tuned from the aligned one. For every weight matrix W (same name and shape in all three)

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
  `fraction=1` keeps every direction (the reference's `left_singular_basis` returns None for frac >= 1 and falls
  back to the line-of-V rule of the vectors, below).
- P comes from the exact SVD, `torch.linalg.svd` in float32 (`svd="exact"`, the default), as the reference
  computes it in effect: its `left_singular_basis` calls `torch.linalg.svd_lowrank(mat, q=k, niter=2)` inside a
  `try`, but `torch.linalg` has no `svd_lowrank` (the randomized routine is `torch.svd_lowrank`), so the call
  raises AttributeError, its `except Exception` catches it, and it always runs `torch.linalg.svd(mat,
  full_matrices=False)`. `svd="randomized"` is a named departure: seeded `torch.svd_lowrank` with q = 2k +
  `oversample` columns and `niter` power iterations (the exact SVD where q would reach min(m, n)); it is close to
  the exact P where the spectrum decays, and cheaper for very large matrices.
- A matrix that alignment left exactly unchanged (V = 0) has no alignment subspace: it is skipped (P is empty)
  and listed in `unchanged`, rather than failing on a rank of 0.
- Parameters that are not matrices (norm weights, biases) follow the reference: the fine-tune's part along the
  line of V, (<U, V> / <V, V>) V, plays the role of P P^T U. Tied weights (an unembedding tied to the
  embedding) are one parameter and are counted once.
- Energies are sums over the matrices only (the reference's `energy_kept_ratio` also counts the vectors).
- The updates are differences of float32 weights (the reference subtracts float16 weights and casts the
  difference to float32). Checkpoints are written in float32 (the reference casts back to float16), with the
  fine-tuned checkpoint's config and tokenizer, atomically (`interp.steering.orthogonalize.write_checkpoint`).

**Update spaces** (`update_overlap`; the reference's `exp-3-update_spaces/update_spaces_functions.py`,
`compute_mso_csv`). Two fine-tunes of one instruct (aligned) model, one on useful data and one on harmful data;
per parameter their updates

    dU = W_useful - W_instruct      dH = W_harmful - W_instruct

(every floating parameter, as the reference's `_reshape_2d` makes it a matrix: a vector of n becomes n x 1, a
tensor of three or more axes its first axis by the rest). Each update's energy basis is its top-k left singular
vectors with k the smallest number whose squared singular values hold at least `share` of the total
(`energy_k`: the reference's `searchsorted` rule), the two bases Q_U (m x k_U) and Q_H (m x k_H) are compared by
their mean squared overlap ||Q_U^T Q_H||_F^2 / min(k_U, k_H) (1 when one contains the other, 0 when orthogonal),
and the random baseline is max(k_U, k_H) / m, the expected overlap of two independent Haar-random subspaces of
those dimensions in R^m (the reference's `mso_random`). The reference sweeps `share` over 0.01, 0.1, ..., 0.9,
0.99 (`UPDATE_SHARES`, its `--energy-fracs` default) at the granularity `tensor` (its default).
- Faithful: the updates, the reshaping, k, the overlap and the baseline as above; the singular vectors by the
  reference's rule (`svd="reference"`): the exact SVD where max(m, n) <= 10000, else `torch.svd_lowrank` with
  q = max(1, int(min(m, n) / 4)) and two power iterations (its `hasattr(torch.linalg, "svd_lowrank")` test is
  false, so it takes that fallback), the share then counted against the energy of the q computed values only, as
  the reference does; the random routine is seeded here.
- Departs (named options): `svd="exact"` runs the exact SVD for every tensor; the updates are float32
  differences (`delta_dtype="float32"`; `"float16"` subtracts float16 weights, as the reference's float16
  state dicts do); a parameter that either fine-tune left exactly unchanged has no energy basis and is listed in
  `unchanged` (the reference would compare arbitrary singular vectors of a zero matrix); tied parameters once;
  the `layer` granularity is not offered (the reference's own `layer` grouping cannot run: its pattern doubles
  the backslashes inside a raw string, so it matches no parameter name, every `model.` parameter falls into one group,
  and `torch.cat` cannot stack that group's matrices of different widths).
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
PROJECTION_SVD = ("exact", "randomized")  # how P is computed: "exact" is what the reference runs (module doc)
UPDATE_SVD = ("reference", "exact")  # the update-space bases: the reference's size rule, or exact everywhere
UPDATE_SHARES = (0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99)  # the reference's --energy-fracs
DELTA_DTYPES = ("float32", "float16")  # update differences in float32, or of float16 weights (the reference)
REFERENCE_FULL_SVD_MAX = 10_000  # the reference runs the exact SVD where max(m, n) is at most this


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

def check_svd(svd: str, allowed: Sequence[str] = PROJECTION_SVD) -> str:
    if svd not in allowed:
        raise InterpError(f"svd must be one of {', '.join(allowed)}; got {svd!r}")
    return svd


def _top(V: Float[Tensor, "m n"], k: int, seed: int, oversample: int, niter: int,
         svd: str = "exact") -> tuple[Tensor, int]:
    """The top-k left singular vectors of V, by the exact SVD (`svd="exact"`) or by seeded `torch.svd_lowrank`
    (`svd="randomized"`; the exact SVD where q would reach min(m, n)), and V's numerical rank among the singular
    values computed (those above max(m, n) * eps * s_max, numpy's `matrix_rank` rule)."""
    m, n = V.shape
    check_svd(svd)
    q = min(m, n) if svd == "exact" else min(2 * k + oversample, min(m, n))
    if q == min(m, n):  # exact, or the randomized method would span everything: the exact SVD costs no more
        u, s, _ = torch.linalg.svd(V.float(), full_matrices=False)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            u, s, _ = torch.svd_lowrank(V.float(), q=q, niter=niter)
    tol = float(s[0]) * max(m, n) * torch.finfo(torch.float32).eps
    return u[:, :k], int((s > tol).sum())


def top_left_singular(V: Float[Tensor, "m n"], k: int, seed: int = 0, oversample: int = 10, niter: int = 6,
                      name: str = "the matrix", svd: str = "exact") -> Float[Tensor, "m k"]:
    """The top-k left singular vectors of V (orthonormal columns): by the exact SVD (`svd="exact"`, what the
    reference runs) or by `torch.svd_lowrank` with a fixed seed (`svd="randomized"`).

    k = 0 gives an empty [m, 0] basis. k beyond the numerical rank of V is an error naming the matrix: those
    directions would be arbitrary.
    """
    m, n = V.shape
    if k > min(m, n):
        raise InterpError(f"k={k} is larger than the rank a {m} x {n} matrix can have ({name})")
    if k == 0:
        return V.new_zeros(m, 0)
    u, rank = _top(V, k, seed, oversample, niter, svd)
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


def matrix_stats(name: str, V: Tensor, U: Tensor, P: Tensor, seed: int, oversample: int, niter: int,
                 svd: str = "exact") -> MatrixStats:
    m, k = P.shape
    u2 = float((U.double() ** 2).sum())
    inside = float((P.T @ U).double().pow(2).sum())
    rand = random_basis(m, k, seed)
    rand_inside = float((rand.T @ U).double().pow(2).sum())
    overlap = None
    if k and u2 > 0:  # the top-k subspace of U (or all of it, where U's rank is below k)
        Pu, rank_u = _top(U, k, seed, oversample, niter, svd)
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
               seed: int = 0, oversample: int = 10, niter: int = 6, progress: bool = True,
               svd: str = "exact") -> Projection:
    """The alignment subspace of every matrix for `rank`, and the fine-tune's part inside it (see the module doc;
    `svd`: "exact", what the reference runs, or "randomized", `oversample` and `niter` its settings)."""
    check_svd(svd)
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
        P = top_left_singular(V, ks[name], seed + i, oversample, niter, name=name, svd=svd)
        parts[name] = project(U, P)
        stats.append(matrix_stats(name, V, U, P, seed + i, oversample, niter, svd))
    return Projection(rank, parts, stats, unchanged)


# ----- update spaces: a useful and a harmful fine-tune of one model -----

def as_matrix(t: Tensor) -> Tensor:
    """The reference's `_reshape_2d`: a vector of n becomes n x 1, a matrix stays, more axes become the first axis
    by the rest."""
    if t.ndim == 1:
        return t.unsqueeze(1)
    return t if t.ndim == 2 else t.reshape(t.shape[0], -1)


def left_singular(M: Float[Tensor, "m n"], svd: str = "reference", seed: int = 0) -> tuple[Tensor, Tensor]:
    """Left singular vectors [m, r] and singular values [r] (descending) of M in float32: the exact SVD, or with
    `svd="reference"` and max(m, n) above `REFERENCE_FULL_SVD_MAX`, the reference's fallback, seeded
    `torch.svd_lowrank` with q = max(1, int(min(m, n) / 4)) and niter = 2 (r = q then)."""
    check_svd(svd, UPDATE_SVD)
    M = M.float()
    m, n = M.shape
    if svd == "exact" or max(m, n) <= REFERENCE_FULL_SVD_MAX:
        u, s, _ = torch.linalg.svd(M, full_matrices=False)
        return u, s
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        u, s, _ = torch.svd_lowrank(M, q=max(1, int(0.25 * min(m, n))), niter=2)
    return u, s


def energy_k(S: Float[Tensor, "r"], share: float) -> int:
    """The reference's k: the smallest k whose squared singular values S[:k] hold at least `share` of the energy
    of all of S (`searchsorted` on the cumulative energy), at most len(S)."""
    if not 0 < share <= 1:
        raise InterpError(f"share must be in (0, 1], the share of the energy the basis holds; got {share!r}")
    energy = S.double().square().cumsum(0)
    k = int(torch.searchsorted(energy, share * energy[-1])) + 1
    return min(k, len(S))


def energy_basis(M: Float[Tensor, "m n"], share: float, svd: str = "reference", seed: int = 0
                 ) -> Float[Tensor, "m k"]:
    """The top-k left singular vectors of M holding `share` of its energy (`energy_k`), orthonormal columns."""
    u, s = left_singular(M, svd, seed)
    if not float(s.max()) > 0:
        raise InterpError("the matrix is zero: it has no energy basis")
    return u[:, :energy_k(s, share)]


def mean_squared_overlap(Qa: Float[Tensor, "m ka"], Qb: Float[Tensor, "m kb"]) -> float:
    """||Qa^T Qb||_F^2 / min(ka, kb) of two orthonormal bases (columns): 1 when one span contains the other, 0
    when they are orthogonal."""
    if Qa.shape[0] != Qb.shape[0] or min(Qa.shape[1], Qb.shape[1]) == 0:
        raise InterpError(f"bases of shapes {tuple(Qa.shape)} and {tuple(Qb.shape)} cannot be compared")
    return float((Qa.double().T @ Qb.double()).square().sum()) / min(Qa.shape[1], Qb.shape[1])


def random_overlap(ka: int, kb: int, d: int) -> float:
    """The expected mean squared overlap of independent Haar-random ka- and kb-dim subspaces of R^d:
    max(ka, kb) / d (the reference's `mso_random`)."""
    return max(ka, kb) / d


@dataclass
class UpdateRow:
    """One parameter at one energy share: the two updates' basis sizes, their overlap and its random baseline."""

    name: str
    shape: tuple[int, int]  # as a matrix (`as_matrix`)
    share: float
    k_useful: int
    k_harmful: int
    overlap: float  # ||Q_U^T Q_H||_F^2 / min(k_U, k_H)
    expected: float  # max(k_U, k_H) / m
    matrix: bool  # a 2-D parameter (vectors are n x 1: k = 1 and the overlap is a squared cosine)


@dataclass
class UpdateComparison:
    """Every parameter's update-space overlap at every share, and the parameters either update left unchanged."""

    shares: tuple[float, ...]
    rows: list[UpdateRow]
    unchanged: list[str]
    svd: str
    delta_dtype: str
    norms: dict[str, tuple[float, float]]  # name -> (||dU||_F, ||dH||_F)

    def at(self, share: float) -> list[UpdateRow]:
        return [r for r in self.rows if r.share == share]

    def totals(self) -> dict[str, dict]:
        """Per share (keys as text): the mean overlap and mean baseline over all parameters, over the matrices and
        over the vectors, and how many tensors each mean counts."""
        out = {}
        for share in self.shares:
            rows = self.at(share)
            groups = {"all": rows, "matrices": [r for r in rows if r.matrix], "vectors": [r for r in rows if not r.matrix]}
            out[f"{share:g}"] = {
                name: {"overlap": sum(r.overlap for r in g) / len(g) if g else None,
                       "expected": sum(r.expected for r in g) / len(g) if g else None,
                       "above_random": sum(r.overlap > r.expected for r in g), "tensors": len(g)}
                for name, g in groups.items()}
        return out


def check_shares(shares: Sequence[float]) -> tuple[float, ...]:
    if isinstance(shares, (int, float)) or not len(shares):
        raise InterpError(f"shares must be a non-empty list of energy shares in (0, 1]; got {shares!r}")
    bad = [x for x in shares if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x <= 1]
    if bad:
        raise InterpError(f"every share must be in (0, 1], the share of the energy a basis holds; got {bad}")
    if len(set(shares)) != len(shares):
        raise InterpError(f"shares repeat: {list(shares)}")
    return tuple(float(x) for x in shares)


@torch.no_grad()
def update_overlap(instruct: dict[str, Tensor], useful: dict[str, Tensor], harmful: dict[str, Tensor],
                   shares: Sequence[float] = UPDATE_SHARES, svd: str = "reference", delta_dtype: str = "float32",
                   seed: int = 0, progress: bool = True) -> UpdateComparison:
    """Compare the useful and the harmful fine-tune's updates of every parameter (see the module doc): per share,
    each update's energy basis, their mean squared overlap and the max(k_U, k_H) / m baseline. The weights are
    dicts of one architecture (`load_weights`); one SVD per update serves every share."""
    shares = check_shares(shares)
    check_svd(svd, UPDATE_SVD)
    if delta_dtype not in DELTA_DTYPES:
        raise InterpError(f"delta_dtype must be one of {', '.join(DELTA_DTYPES)}; got {delta_dtype!r}")
    matrices(instruct, useful, harmful)  # one architecture, or a one-line error naming the parameter
    cast = getattr(torch, delta_dtype)
    rows: list[UpdateRow] = []
    unchanged: list[str] = []
    norms: dict[str, tuple[float, float]] = {}
    for i, (name, w) in enumerate(tqdm(instruct.items(), desc="update spaces", unit="param", disable=not progress)):
        if not torch.is_floating_point(w):
            continue
        w0 = w.to(cast)
        du = as_matrix((useful[name].to(cast) - w0).float())
        dh = as_matrix((harmful[name].to(cast) - w0).float())
        norms[name] = (float(du.norm()), float(dh.norm()))
        if not (du.any() and dh.any()):
            unchanged.append(name)
            continue
        (uu, su), (uh, sh) = left_singular(du, svd, seed + 2 * i), left_singular(dh, svd, seed + 2 * i + 1)
        m = du.shape[0]
        for share in shares:
            ku, kh = energy_k(su, share), energy_k(sh, share)
            rows.append(UpdateRow(name, (m, du.shape[1]), share, ku, kh, mean_squared_overlap(uu[:, :ku], uh[:, :kh]),
                                  random_overlap(ku, kh, m), w.ndim == 2))
    if not rows:
        raise InterpError("neither fine-tune changed any parameter that the other changed too: there is nothing to "
                          "compare (are the checkpoints the instruct model itself?)")
    return UpdateComparison(shares, rows, unchanged, svd, delta_dtype, norms)


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


__all__ = ["METHODS", "PROJECTION_SVD", "UPDATE_SVD", "UPDATE_SHARES", "DELTA_DTYPES", "Rank", "load_weights",
           "check_sources", "matrices", "top_left_singular", "project", "along", "combine", "random_basis",
           "MatrixStats", "Projection", "projection", "check_out", "write_projection", "as_matrix", "left_singular",
           "energy_k", "energy_basis", "mean_squared_overlap", "random_overlap", "UpdateRow", "UpdateComparison",
           "check_shares", "update_overlap"]
