"""Diagnostics for the interpretability illusion of subspace activation patching, for any subspace patched at a site.

The paper (Makelov, Lange, Geiger and Nanda, ICLR 2024, "Is This the Subspace You Are Looking For? An
Interpretability Illusion for Subspace Activation Patching"). Patching a subspace can change the output although
the subspace does not carry the feature the way the model uses it. Write the patched direction v = v_null + v_row,
split by the weights that read the site: v_null in their kernel (nothing downstream sees it), v_row in their
rowspace. If the feature varies along a *disconnected* direction (in the kernel) and the reader has a *dormant*
direction (in the rowspace, but constant on the data), then patching along (v_dis + v_dorm)/sqrt2 moves the
source-minus-base difference of the disconnected coordinate onto the dormant one, which the reader sees: the output
moves, through a pathway the model never uses. The paper's signs of it, all reported here:

- the split of each basis vector into the rowspace and the kernel of the reader (`null_norm`: ||P_null v||^2).
  At `mlp.hook_post` the reader is the MLP's output projection W_out ([d_model, d_mlp], down_proj), whose kernel
  has d_mlp - d_model dimensions. At the residual stream (`hook_resid_pre|post`) the readers are the attention
  heads the user names, as the reference decomposes its residual DAS direction against the name movers' W_Q
  (github.com/amakelov/activation-patching-illusion, `ioi_analysis.ipynb`, `decompose_resid_along_namemovers`:
  v = v Q Q^T + (v - v Q Q^T) with Q an orthonormal basis of the columns of the heads' stacked W_Q): the reader
  is the heads' W_Q^T rows stacked ([heads * d_head, d], `reader_weight`; W_K and W_V as options), from
  `interp.circuits.heads.head_weights` with the attention norm's weight folded in (as TransformerLens' fold_ln,
  which the reference loads with). Without named readers the whole residual stream is the reader (every later
  layer reads it at full rank; kernel {0}): the shares are 0 by definition, only the "beyond the component"
  rule can fire, and the Result says so;
- the variance, over the activations of both runs of the items judged (the data the patch moves between), of the
  coordinates along the nullspace part and along the rowspace part (summed over the basis vectors); a dormant
  rowspace part has near-zero variance. `null_variance_share` = var_null / (var_null + var_row): the share of what the patch moves
  along the subspace that the reader cannot see directly;
- the effect (logit-difference recovery) of patching the rowspace part alone, the nullspace part alone (each
  orthonormalised), the whole subspace, and the whole component (plain activation patching). Patching the
  nullspace part alone cannot change the output at `mlp.hook_post` (the reader does not see it); what the whole
  subspace does beyond its rowspace part is what needs the nullspace part: `whole - rowspace`.

Verdict per subspace: "possible illusion" when either rule fires, with the numbers that fired it, else
"consistent":
- dormant pathway (at the residual stream: "outside the readers"): the subspace moves the output
  (whole >= MOVES), most of the variation it patches lies in the kernel (null_variance_share > NULL_SHARE), and
  most of its effect needs that kernel part (whole - rowspace > NEEDS_NULL * whole). At the residual stream the
  kernel of the named heads is read by the rest of the model, so there the rule says that the subspace works
  through something other than the readers named, not that nothing reads it;
- beyond the component: the subspace restores more than patching the whole component does
  (whole - full > EXCESS); in particular the paper's red flag, a subspace that moves the output while patching
  the whole component does not. A faithful subspace cannot do much more than the component it is part of.
Departure from the paper: it splits the subspace by norm and reads the variance off plots; here the variance share
is what the rule uses, because the norm split of the canonical illusory direction (v_dis + v_dorm)/sqrt2 is 1/2 by
construction, while its variance lies entirely in the kernel (the dormant part has none).

The thresholds (`Thresholds`, defaults MOVES, NULL_SHARE, NEEDS_NULL, EXCESS) are fixed before a run: the
analysis takes them from its config, never from the data it judges, and its Result records them and whether each
was the default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from interp.circuits.das import Interchange
from interp.circuits.heads import head_weights
from interp.core.subspace import Subspace
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.model import Model

# The dormant-pathway rule already has structural evidence (where the variance lies, what the rowspace part alone
# does), so a modest effect suffices; the beyond-the-component rule has only the two effects, and nonlinear
# interactions can let a faithful subspace restore somewhat more than its whole component, so it wants a wider gap.
MOVES = 0.1  # a subspace "moves the output" when it restores at least a tenth of the clean - corrupted gap
NULL_SHARE = 0.5  # above this share of its patched variance in the reader's kernel, it mostly moves what is not read
NEEDS_NULL = 0.5  # above this share of the whole effect missing without the kernel part, the effect needs that part
EXCESS = 0.2  # a subspace restoring this much more than the whole component does is suspect
_RANK_TOL = 1e-6  # singular values below this share of the largest count as zero
_PART_TOL = 1e-6  # a basis vector's rowspace or kernel part shorter than this is zero (float32 rounding)
WEIGHTS = ("Q", "K", "V")  # which of a reading head's weights span what it reads


@dataclass(frozen=True)
class Thresholds:
    """The verdict's thresholds (module docstring), fixed before the run they judge."""

    moves: float = MOVES
    null_share: float = NULL_SHARE
    needs_null: float = NEEDS_NULL
    excess: float = EXCESS

    def to_json(self) -> dict[str, float]:
        return {"moves": self.moves, "null_share": self.null_share, "needs_null": self.needs_null,
                "excess": self.excess}


def parse_heads(heads: Sequence) -> list[tuple[int, int]]:
    """(layer, head) pairs from pairs or "L.H" strings ("9.6")."""
    out = []
    for h in heads:
        if isinstance(h, str):
            bits = h.replace(",", ".").split(".")
            if len(bits) != 2 or not all(b.strip().lstrip("-").isdigit() for b in bits):
                raise InterpError(f"reader head {h!r}: write a head as LAYER.HEAD, e.g. 9.6")
            h = (int(bits[0]), int(bits[1]))
        if not (isinstance(h, (tuple, list)) and len(h) == 2 and all(isinstance(x, int) for x in h)):
            raise InterpError(f"reader head {h!r}: give (layer, head) or 'LAYER.HEAD'")
        out.append((int(h[0]), int(h[1])))
    return list(dict.fromkeys(out))


def reader_weight(model: "Model", site: str, readers: Sequence = (), weights: Sequence[str] = ("Q",)
                  ) -> Tensor | None:
    """The weights that read `site`, [d_out, d] (float64): the MLP's output projection at `mlp.hook_post`; at the
    residual stream the rows of W_Q^T (and/or W_K^T, W_V^T: `weights`) of the heads `readers` ((layer, head) or
    "L.H"; heads of the layers that read the site), stacked, with the attention norm's weight folded in
    (`interp.circuits.heads.head_weights`), or None when no readers are named (the whole stream: full rank)."""
    (s,) = model.sites(site)
    if s.kind == "mlp.hook_post":
        if readers:
            raise InterpError(f"{s} is read by its MLP's output projection; reader heads apply to the residual stream")
        w: Tensor = model.layers[s.layer].get_submodule(model.family.down_proj).weight.detach()  # type: ignore[operator]
        return (w.T if model.family.conv1d else w).to("cpu", torch.float64)
    if s.kind not in ("hook_resid_pre", "hook_resid_post"):
        raise InterpError(f"no reader is known for {s}; the diagnostics cover hook_resid_pre|post and mlp.hook_post")
    heads = parse_heads(readers)
    if not heads:
        return None
    weights = list(dict.fromkeys(w.upper() for w in weights))
    if not weights or any(w not in WEIGHTS for w in weights):
        raise InterpError(f"reader weights {weights}; choose from {', '.join(WEIGHTS)}")
    first = s.layer + (s.kind == "hook_resid_post")  # the first layer whose heads read the site
    for layer, head in heads:
        if not first <= layer < model.n_layers or not 0 <= head < model.n_heads:
            raise InterpError(f"head {layer}.{head} cannot read {s}: give heads of layers {first}..{model.n_layers - 1} "
                              f"with indices 0..{model.n_heads - 1}")
    hw = head_weights(model, fold_norm=True, dtype=torch.float64)
    group = hw.n_heads // hw.n_kv_heads
    mats = {"Q": hw.W_Q, "K": hw.W_K, "V": hw.W_V}
    rows = [mats[w][layer, head if w == "Q" else head // group].T for layer, head in heads for w in weights]
    return torch.cat(rows).cpu()


def describe_reader(site: str, readers: Sequence = (), weights: Sequence[str] = ("Q",)) -> str:
    """What `reader_weight` read for `site`, in words (for the Result)."""
    if "mlp.hook_post" in site:
        return "the MLP's output projection W_out (down_proj): its kernel is what nothing downstream reads"
    heads = parse_heads(readers)
    if not heads:
        return ("no readers named: the residual stream is read at full rank by the layers above (no kernel, "
                "nullspace shares 0 by definition); only the 'beyond the component' rule can fire")
    names = ", ".join(f"{layer}.{head}" for layer, head in heads)
    return (f"the {'/'.join(w.upper() for w in weights)} weights of heads {names} (attention norm folded in): the "
            f"rowspace is what they read, the kernel what they do not")


def rowspace(reader: Float[Tensor, "out d"]) -> Float[Tensor, "r d"]:
    """Orthonormal rows spanning the rowspace of `reader` (the orthogonal complement of its kernel), in float64:
    u_i^T W / s_i from the eigenvectors u_i of W W^T (out x out, small for an MLP's W_out) with s_i^2 above
    (_RANK_TOL s_max)^2; the same rows as an SVD's, at a fraction of its cost on a wide W."""
    w = reader.to(torch.float64)
    lam, u = torch.linalg.eigh(w @ w.T)
    keep = lam > max(float(lam.max()), 0.0) * _RANK_TOL**2
    if not keep.any():
        return w[:0]
    return (u[:, keep].T @ w) / lam[keep].sqrt()[:, None]


def orthonormal_span(rows: Float[Tensor, "k d"]) -> Float[Tensor, "r d"]:
    """Orthonormal rows spanning the span of `rows` (r <= k; zero or dependent rows dropped; r may be 0)."""
    if rows.shape[0] == 0:
        return rows.float()
    _, s, vh = torch.linalg.svd(rows.to(torch.float64), full_matrices=False)
    keep = s > max(float(s[0]) * _RANK_TOL, 1e-12) if len(s) else s > 0
    return vh[keep].float()


@dataclass
class Diagnosis:
    """The illusion diagnostics of one subspace (module docstring); effects are recoveries on the given items."""

    name: str
    k: int
    null_norm: list[float]  # per basis vector: ||P_null v||^2 (its share of the unit norm in the reader's kernel)
    var_null: float
    var_row: float
    effect: dict[str, float]  # whole, rowspace, nullspace, full
    full_rank_reader: bool
    verdict: str = "consistent"
    reasons: list[str] = field(default_factory=list)
    reader: str = ""  # what reads the site (`describe_reader`); "" = the site's default reader
    rule: str = "dormant pathway"  # the kernel rule's name: "outside the readers" at the residual stream

    @property
    def null_norm_share(self) -> float:
        return sum(self.null_norm) / max(len(self.null_norm), 1)

    @property
    def null_variance_share(self) -> float:
        total = self.var_null + self.var_row
        return self.var_null / total if total > 0 else 0.0

    @property
    def illusion(self) -> bool:
        return self.verdict != "consistent"

    def to_json(self) -> dict:
        note = self.reader or ("the residual stream is read at full rank by the layers above: no kernel, nullspace "
                               "shares 0 by definition" if self.full_rank_reader
                               else "split by the kernel of the weights that read the site")
        return {"k": self.k, "verdict": self.verdict, "reasons": self.reasons, "null_norm": self.null_norm,
                "null_norm_share": self.null_norm_share, "var_null": self.var_null, "var_row": self.var_row,
                "null_variance_share": self.null_variance_share, "effect": self.effect, "reader": note}


def verdict(d: Diagnosis, thresholds: Thresholds | None = None) -> Diagnosis:
    """Fill in `d.verdict` and `d.reasons` by the two rules of the module docstring, with `thresholds` (default
    `Thresholds()`)."""
    t = thresholds or Thresholds()
    e = d.effect
    reasons = []
    needs = e["whole"] - e["rowspace"]
    if e["whole"] >= t.moves and d.null_variance_share > t.null_share and needs > t.needs_null * e["whole"]:
        where = "the reader's kernel" if d.rule == "dormant pathway" else "the kernel of the readers named"
        reasons.append(f"{d.rule}: the subspace restores {e['whole']:.2f}, {d.null_variance_share:.0%} of the "
                       f"variation it patches lies in {where} (> {t.null_share:.0%}), and its rowspace part "
                       f"alone restores {e['rowspace']:.2f}, so {needs:.2f} (> {t.needs_null:.0%} of the whole) needs "
                       f"the kernel part")
    if e["whole"] - e["full"] > t.excess:
        reasons.append(f"beyond the component: the subspace restores {e['whole']:.2f}, patching the whole component "
                       f"{e['full']:.2f} (more than {t.excess} below)")
    d.reasons = reasons
    d.verdict = "possible illusion" if reasons else "consistent"
    return d


def decompose(v: Float[Tensor, "... d"], reader: Float[Tensor, "out d"] | None = None,
              rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(rowspace part, kernel part) of the vectors `v` against `reader` (or its orthonormal `rows`,
    `rowspace(reader)`), in float64; the parts sum to `v`. No reader: everything in the rowspace."""
    v = v.to(torch.float64)
    if rows is not None:
        q = rows.to(torch.float64)
    elif reader is not None:
        q = rowspace(reader)
    else:
        return v, torch.zeros_like(v)
    row = (v @ q.T) @ q
    return row, v - row


def diagnose(problem: Interchange, subspace: Subspace | Tensor, reader: Tensor | None, items: Sequence[int],
             name: str = "subspace", full: float | None = None, rows: Tensor | None = None,
             thresholds: Thresholds | None = None, reader_note: str = "", rule: str = "dormant pathway") -> Diagnosis:
    """The diagnostics and verdict of `subspace` patched in `problem` (at its site and positions), with effects
    measured on `items`. reader: the weights reading the site [d_out, d] (`reader_weight`), None for a full-rank
    reader. full: the whole component's recovery on `items` when already known (else measured here); rows:
    `rowspace(reader)` when already computed (one eigendecomposition of the reader per site, not per subspace).
    thresholds: the verdict's (fixed in advance; default `Thresholds()`); reader_note, rule: how the Result names
    the reader and the kernel rule ("outside the readers" for heads reading the residual stream)."""
    basis = subspace.basis if isinstance(subspace, Subspace) else subspace.detach()
    basis = basis.to("cpu", torch.float64)
    if basis.dim() != 2 or basis.shape[1] != problem.width:
        raise InterpError(f"{name}: a basis of shape {tuple(basis.shape)} cannot be patched at {problem.site}, "
                          f"whose activations are {problem.width} wide")
    if reader is not None and reader.shape[-1] != problem.width:
        raise InterpError(f"the reader is {reader.shape[-1]} wide, the site {problem.site} {problem.width}")
    row, null = decompose(basis, reader, rows)
    for part in (row, null):  # a part of a unit vector this short is rounding, not a direction to patch
        part[part.norm(dim=-1) < _PART_TOL] = 0
    index = torch.tensor(list(items))
    acts = torch.cat([problem.source[index], problem.base[index]]).reshape(-1, problem.width).to(torch.float64)
    var_row = float((acts @ row.T).var(0, unbiased=False).sum())
    var_null = float((acts @ null.T).var(0, unbiased=False).sum())
    whole = problem.recovery(items, basis.float())
    effect = {"whole": whole,
              "rowspace": whole if reader is None else problem.recovery(items, orthonormal_span(row)),
              "nullspace": problem.recovery(items, orthonormal_span(null)),  # 0.0 without a forward when empty
              "full": problem.recovery(items, None) if full is None else float(full)}
    null_norm = [float(v) for v in (null**2).sum(-1)]
    return verdict(Diagnosis(name, basis.shape[0], null_norm, var_null, var_row, effect, reader is None,
                             reader=reader_note, rule=rule), thresholds)
