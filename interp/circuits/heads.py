"""Attention heads as matrices: W_OV and W_QK per head, their SVDs, composition scores, and channel edits.

Each head h of layer l reads the residual stream x (a row vector, TransformerLens convention) and
- attends with the bilinear form x_q W_QK x_k^T, W_QK = W_Q W_K^T (d x d, rank <= d_head);
- writes (attention-weighted) x W_OV, W_OV = W_V W_O (d x d, rank <= d_head).
The weights come from the HF projections named in the site table (`Family.qkv_proj`, `Family.o_proj`); with
grouped-query attention a key/value head is shared by n_heads / n_kv_heads query heads (head h uses key/value
head h // (n_heads / n_kv_heads), as HF's `repeat_kv` does), so W_QK and W_OV are per query head.

What is left out, and why:
- The norm in front of attention (RMSNorm on Llama/Qwen2): its weight gamma is folded into W_Q, W_K, W_V
  (`fold_norm=True`: rows scaled by gamma), its 1/rms scale is ignored (it rescales a whole token, not a direction).
- Rotary embeddings: W_QK is the form at relative offset 0 (RoPE rotates q and k by position; the rotated forms
  have the same singular values per rotation pair only approximately). The composition scores use this form.
- Biases (Qwen2 has q/k/v biases): b_V adds a constant b_V W_O to the head output (attention weights sum to
  one), an offset that is not part of the linear map W_OV; b_Q and b_K add terms linear or constant in x, not
  part of the bilinear form W_QK. They stay in the model (and in every edit); `HeadWeights` keeps them.

Factored matrices. A d x d product is never formed: M = A B is kept as its factors (A: d x r, B: r x d). Its SVD
comes from thin QR decompositions A = Q_A R_A and B^T = Q_B R_B and the SVD of the small r x r core
R_A R_B^T = U_c S V_c^T: M = (Q_A U_c) S (Q_B V_c)^T. Its Frobenius norm from r x r Gram matrices:
||A B||_F^2 = tr((A^T A)(B B^T)). All of it batched over every head of every layer.

Composition scores (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"; TransformerLens'
conventions for row vectors): for a sender head 1 in an earlier layer and a receiver head 2 in a later one,
  Q: ||W_OV1 W_QK2||_F / (||W_OV1||_F ||W_QK2||_F)      (head 1 writes what head 2's queries read)
  K: ||W_OV1 W_QK2^T||_F / (...)                       (... what head 2's keys read)
  V: ||W_OV1 W_OV2||_F / (...)                         (... what head 2's values read)
With W_OV1 = U1 S1 V1^T (V1: the directions it writes) and the receiver's read side X2 S2 (Q: W_QK's left
vectors, K: its right vectors, V: W_OV2's left vectors), the score is ||S1 (V1^T X2) S2||_F / (||S1|| ||S2||): only
r x r matrices per pair. Row i of that matrix is the sender's rank-1 component i (s_i u_i v_i^T); its own
composition score (normalised by its own norm, as Merullo et al. 2024 score components) is
||(V1^T X2)_i S2|| / ||S2||, and its share of the pair's squared composition s_i^2 ||(V1^T X2)_i S2||^2 / sum over i
(shares sum to one). The baseline is the score of random Gaussian matrices of the same shapes and rank.

Channel edits (Merullo, Eickhoff and Pavlick 2024, "Talking Heads"): scale a sender head's OV components by
`scale` (0 removes them): W_OV -> W_OV (I - (1 - scale) V V^T) for the components' write directions V. In
activations it is `ChannelEdit`, a map on the head's `attn.hook_z`; in weights, the same edit on the head's rows
of W_O (`export_channel_edits` writes the checkpoint). Both act on the head's whole output z W_O, b_V's part
included, so they agree exactly.

The inhibition score (Merullo et al.'s data-based check of a channel, their Figure 2 beside the composition
score: removing an inhibition head's component "causes a large drop in the later mover head's ability to
downweight one of the names"). On data items, read the receiver head's attention at the last token (the query
that predicts the answer: END in IOI) to the target token (the answer: IO) and to the inhibited token (the wrong
answer: S), each summed over every position holding that token (S1 and S2). The receiver's gap
a(target) - a(inhibited) measures how well it downweights the inhibited token. The channel is then edited
(`ChannelEdit`: the sender's components scaled by `scale`, 0 removes them) and the gap read again; the inhibition
score is the mean over the items of gap(clean) - gap(edited). Positive: without the channel the receiver attends
relatively more to the inhibited token, so the channel carried inhibition; zero when the edit changes nothing the
receiver reads (an empty channel, or a receiver that does not read the channel's directions). The reference
repository (github.com/jmerullo/talking_heads) holds no code in the stored snapshot, so the formula follows the
paper's description; `attention_to_tokens` gives the raw attentions for any other variant.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, cast

import torch
from jaxtyping import Float
from torch import Tensor, nn

from interp.core.hooks import HookFn
from interp.core.prefix import SAME_EVERYWHERE, register_rule
from interp.core.sites import Family, Site, check_head
from interp.errors import InterpError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from interp.core.model import Model

MODES = ("Q", "K", "V")


# ----- factored matrices -----

@dataclass(frozen=True)
class SVD:
    """M = U diag(S) V^T, batched: U [..., m, k], S [..., k] (descending), V [..., n, k]."""

    U: Float[Tensor, "... m k"]
    S: Float[Tensor, "... k"]
    V: Float[Tensor, "... n k"]

    def dense(self) -> Tensor:
        return (self.U * self.S.unsqueeze(-2)) @ self.V.mT

    def to(self, dtype: torch.dtype) -> "SVD":
        return SVD(self.U.to(dtype), self.S.to(dtype), self.V.to(dtype))


@dataclass(frozen=True)
class FactoredMatrix:
    """M = A @ B kept as its factors, batched: A [..., m, r], B [..., r, n]. The m x n product is never formed
    (except by `dense`, for checks on small cases)."""

    A: Float[Tensor, "... m r"]
    B: Float[Tensor, "... r n"]

    def __post_init__(self) -> None:
        if self.A.shape[-1] != self.B.shape[-2]:
            raise InterpError(f"factors do not chain: A is {tuple(self.A.shape)}, B is {tuple(self.B.shape)}")

    @property
    def T(self) -> "FactoredMatrix":
        return FactoredMatrix(self.B.mT, self.A.mT)

    def __matmul__(self, other: "FactoredMatrix") -> "FactoredMatrix":
        """(A1 B1)(A2 B2) = A1 (B1 A2 B2): the inner r x r product only."""
        return FactoredMatrix(self.A, (self.B @ other.A) @ other.B)

    def norm(self) -> Tensor:
        """Frobenius norm, [...], from the r x r Gram matrices: ||A B||_F^2 = tr((A^T A)(B B^T))."""
        gram_a, gram_b = self.A.mT @ self.A, self.B @ self.B.mT
        return (gram_a * gram_b).sum((-2, -1)).clamp_min(0).sqrt()

    def svd(self) -> SVD:
        """Thin SVD via QR of both factors and the SVD of the small core R_A R_B^T."""
        q_a, r_a = torch.linalg.qr(self.A)
        q_b, r_b = torch.linalg.qr(self.B.mT)
        u, s, vh = torch.linalg.svd(r_a @ r_b.mT)
        return SVD(q_a @ u, s, q_b @ vh.mT)

    def dense(self) -> Tensor:
        return self.A @ self.B


# ----- the weights of every head -----

@dataclass(frozen=True)
class HeadWeights:
    """Per-head weights in TransformerLens layout, every layer stacked.

    W_Q [L, H, d, dh], W_K and W_V [L, H_kv, d, dh], W_O [L, H, dh, d]; b_Q [L, H, dh] and b_K, b_V
    [L, H_kv, dh] or None. `fold_norm` says whether the attention norm's weight is folded into W_Q, W_K, W_V.
    """

    W_Q: Float[Tensor, "layer head d dh"]
    W_K: Float[Tensor, "layer kv d dh"]
    W_V: Float[Tensor, "layer kv d dh"]
    W_O: Float[Tensor, "layer head dh d"]
    b_Q: Tensor | None
    b_K: Tensor | None
    b_V: Tensor | None
    fold_norm: bool

    @property
    def n_layers(self) -> int:
        return self.W_Q.shape[0]

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[1]

    @property
    def n_kv_heads(self) -> int:
        return self.W_K.shape[1]

    def _per_query_head(self, w: Tensor) -> Tensor:
        """Key/value weights repeated for the query heads that share them (HF's repeat_kv order)."""
        return w.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)

    @property
    def OV(self) -> FactoredMatrix:
        """W_OV = W_V W_O per query head, [L, H, d, d] as factors."""
        return FactoredMatrix(self._per_query_head(self.W_V), self.W_O)

    @property
    def QK(self) -> FactoredMatrix:
        """W_QK = W_Q W_K^T per query head, [L, H, d, d] as factors."""
        return FactoredMatrix(self.W_Q, self._per_query_head(self.W_K).mT)


def _check_family(model: "Model") -> Family:
    fam = model.family
    if fam.qkv_proj is None or fam.conv1d:
        raise InterpError(f"{model.hf.config.model_type} has no separate q/k/v projections in the site table; heads as "
                          "matrices support Llama, Qwen2 and Mistral")
    if "post_attention_layernorm" in fam.sites["hook_attn_out"][0]:
        raise InterpError(f"{model.hf.config.model_type} normalises the attention output after W_O, so W_OV is not the "
                          "map into the residual stream; heads as matrices support Llama, Qwen2 and Mistral")
    return fam


@torch.no_grad()
def head_weights(model: "Model", fold_norm: bool = True, dtype: torch.dtype = torch.float64) -> HeadWeights:
    """Read W_Q, W_K, W_V, W_O (and the q/k/v biases) of every head from the HF weights, in `dtype`."""
    fam = _check_family(model)
    H, dh = model.n_heads, model.d_head
    assert fam.qkv_proj is not None  # checked by _check_family
    qs: list[Tensor] = []
    ks: list[Tensor] = []
    vs: list[Tensor] = []
    os_: list[Tensor] = []
    bs: dict[str, list[Tensor]] = {"q": [], "k": [], "v": []}
    for layer in model.layers:
        projs = [cast(nn.Linear, layer.get_submodule(p)) for p in fam.qkv_proj]
        gamma: Tensor | None = layer.get_submodule(fam.attn_norm).weight.to(dtype) if fold_norm and fam.attn_norm else None  # type: ignore[assignment]
        for proj, out, key in zip(projs, (qs, ks, vs), "qkv"):
            w = proj.weight.to(dtype)  # [heads * dh, d]
            w = w.view(-1, dh, w.shape[-1]).mT  # [heads, d, dh]
            out.append(w * gamma[:, None] if gamma is not None else w)
            if proj.bias is not None:
                bs[key].append(proj.bias.to(dtype).view(-1, dh))
        o = cast(nn.Linear, layer.get_submodule(fam.o_proj)).weight.to(dtype)  # [d, H * dh]
        os_.append(o.view(o.shape[0], H, dh).permute(1, 2, 0))  # [H, dh, d]
    bias = {k: torch.stack(v) if len(v) == model.n_layers else None for k, v in bs.items()}
    W_K = torch.stack(ks)
    if H % W_K.shape[1]:
        raise InterpError(f"{H} query heads cannot share {W_K.shape[1]} key/value heads evenly")
    return HeadWeights(torch.stack(qs), W_K, torch.stack(vs), torch.stack(os_), bias["q"], bias["k"], bias["v"],
                       fold_norm)


@dataclass(frozen=True)
class HeadSVDs:
    """The SVDs of every head's W_OV and W_QK ([L, H, ...]) and the weights they came from."""

    OV: SVD
    QK: SVD
    weights: HeadWeights


def head_svds(model: "Model", fold_norm: bool = True, dtype: torch.dtype = torch.float64) -> HeadSVDs:
    """Factored SVDs of W_OV and W_QK for every head of every layer (computed in `dtype`)."""
    w = head_weights(model, fold_norm=fold_norm, dtype=dtype)
    return HeadSVDs(w.OV.svd(), w.QK.svd(), w)


# ----- composition -----

def _component_rows(write: Tensor, read: Tensor, read_s: Tensor) -> Tensor:
    """Per sender component i and receiver: ||(V1^T X2)_i S2|| / ||S2||.

    write [Hs, d, r] (sender write directions), read [..., d, r2], read_s [..., r2] -> [Hs, ..., r]."""
    g = torch.einsum("hdi,...dj->h...ij", write, read)  # [Hs, ..., r, r2]
    rows = (g * read_s.unsqueeze(-2)).norm(dim=-1)
    return rows / read_s.norm(dim=-1).clamp_min(1e-30).unsqueeze(-1)


def _read_side(svds: HeadSVDs, mode: str) -> tuple[Tensor, Tensor]:
    if mode not in MODES:
        raise InterpError(f"unknown composition mode {mode!r}; choose one of {', '.join(MODES)}")
    return {"Q": (svds.QK.U, svds.QK.S), "K": (svds.QK.V, svds.QK.S), "V": (svds.OV.U, svds.OV.S)}[mode]


def scores_from_components(rows: Tensor, sender_s: Tensor) -> Tensor:
    """The full composition score from the component scores: sqrt(sum_i s_i^2 rows_i^2) / ||s||.

    rows [..., r] and sender_s broadcastable to it."""
    return ((sender_s * rows).square().sum(-1).sqrt() / sender_s.norm(dim=-1)).to(rows.dtype)


def component_shares(rows: Tensor, sender_s: Tensor) -> Tensor:
    """Each sender component's share of the pair's squared composition (sums to one over the last axis)."""
    e = (sender_s * rows).square()
    return e / e.sum(-1, keepdim=True).clamp_min(1e-30)


@dataclass(frozen=True)
class Composition:
    """All-pairs composition of one mode. scores [L, H, L, H] (sender layer, head, receiver layer, head; NaN
    unless the sender's layer is earlier); components [L, H, L, H, r]: each sender component's own score."""

    mode: str
    scores: Tensor
    components: Tensor
    sender_s: Tensor  # [L, H, r], the sender OV singular values

    def shares(self, sender: tuple[int, int], receiver: tuple[int, int]) -> Tensor:
        """The components' shares of one pair's squared composition, [r]."""
        return component_shares(self.components[(*sender, *receiver)], self.sender_s[sender])


@torch.no_grad()
def composition(svds: HeadSVDs, mode: str, dtype: torch.dtype = torch.float32) -> Composition:
    """Composition scores of `mode` ("Q", "K" or "V") for every (earlier head, later head) pair, with every
    sender component's score; r x r work per pair, one sender layer at a time."""
    read, read_s = _read_side(svds, mode)
    read, read_s = read.to(dtype), read_s.to(dtype)
    write, s1 = svds.OV.V.to(dtype), svds.OV.S.to(dtype)
    L, H, _, r = write.shape
    comps = torch.full((L, H, L, H, r), float("nan"), dtype=dtype, device=write.device)
    for l1 in range(L - 1):
        comps[l1, :, l1 + 1:] = _component_rows(write[l1], read[l1 + 1:], read_s[l1 + 1:])
    scores = scores_from_components(comps, s1[:, :, None, None, :])
    return Composition(mode, scores.cpu(), comps.cpu(), s1.cpu())


@torch.no_grad()
def random_baseline(d_model: int, d_head: int, n: int = 256, seed: int = 0, dtype: torch.dtype = torch.float32
                    ) -> dict[str, Tensor]:
    """Composition of random matrices of the heads' shapes: W_OV-like and W_QK-like products of Gaussian
    d x d_head and d_head x d factors (independent pairs; for Gaussian factors Q, K and V composition have the
    same distribution). Returns n sampled `scores` and the `components` scores of the senders' components."""
    g = torch.Generator().manual_seed(seed)
    shape = (2, n, d_model, d_head)
    a, b = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    sender = FactoredMatrix(a[0], b[0].mT).svd().to(dtype)
    receiver = FactoredMatrix(a[1], b[1].mT).svd().to(dtype)
    g_ = torch.einsum("ndi,ndj->nij", sender.V, receiver.U)
    rows = (g_ * receiver.S.unsqueeze(-2)).norm(dim=-1) / receiver.S.norm(dim=-1, keepdim=True)
    return {"scores": scores_from_components(rows, sender.S), "components": rows}


# ----- channel edits -----

def write_directions(svds: HeadSVDs, layer: int, head: int, components: Sequence[int]) -> Float[Tensor, "k d"]:
    """The residual-stream directions that components of a head's W_OV write (rows of V^T)."""
    check_head(layer, head, svds.weights.n_layers, svds.weights.n_heads)
    r = svds.OV.S.shape[-1]
    bad = [c for c in components if not 0 <= c < r]
    if not components or bad:
        raise InterpError(f"components {list(components)} are not in 0..{r - 1} (the head's OV has rank <= {r})")
    return svds.OV.V[layer, head][:, list(components)].mT.float()


def _o_proj_block(model: "Model", layer: int, head: int) -> tuple[nn.Linear, slice]:
    _check_family(model)
    check_head(layer, head, model.n_layers, model.n_heads)
    lin = cast(nn.Linear, model.layers[layer].get_submodule(model.family.o_proj))
    return lin, slice(head * model.d_head, (head + 1) * model.d_head)


def _in_write_space(w_o: Tensor, v: Tensor, layer: int, head: int) -> Tensor:
    """Orthonormal basis of the directions v ([k, d]), checked to lie in the head's write space (rows of W_O)."""
    q = torch.linalg.qr(v.mT).Q  # [d, k]
    row_basis = torch.linalg.qr(w_o.mT).Q  # [d, dh]
    outside = (q - row_basis @ (row_basis.mT @ q)).norm() / q.norm()
    if outside > 1e-3:
        raise InterpError(f"the directions are not in the write space of head {layer}.{head} ({outside:.2g} of them "
                          f"lies outside); pass that head's own OV components (interp.circuits.heads.write_directions)")
    return q


@dataclass(frozen=True)
class ChannelEdit:
    """Scale what head `head` of `layer` writes along `directions` ([k, d], inside its write space, e.g. its OV
    components from `write_directions`) by `scale` (0 removes the channel, 2 doubles it), at every position.

    Acts on the head's `attn.hook_z`: z -> z P with P = I - (1 - scale) W_O V V^T W_O^+, so that the head's output
    z W_O becomes z W_O (I - (1 - scale) V V^T) while every other head is untouched."""

    layer: int
    head: int
    directions: Float[Tensor, "k d"]
    scale: float = 0.0

    def z_map(self, model: "Model") -> Float[Tensor, "dh dh"]:
        """P, the map on the head's z (float64)."""
        lin, cols = _o_proj_block(model, self.layer, self.head)
        w_o = lin.weight[:, cols].mT.double()  # [dh, d]
        v = _in_write_space(w_o, torch.as_tensor(self.directions).reshape(-1, model.d_model).double().to(w_o.device),
                            self.layer, self.head)
        pinv = torch.linalg.pinv(w_o)  # [d, dh]
        return torch.eye(w_o.shape[0], dtype=torch.float64, device=w_o.device) - (1 - self.scale) * (w_o @ v) @ (v.mT @ pinv)

    def hooks(self, model: "Model") -> dict[Site, list[HookFn]]:
        p = self.z_map(model)
        head = self.head
        cache: dict = {}

        def fn(site: Site, z: Tensor) -> Tensor:  # z: [batch, pos, head, dh]
            key = (z.device, z.dtype)
            if key not in cache:
                cache[key] = p.to(device=z.device, dtype=z.dtype)
            z = z.clone()
            z[:, :, head] = z[:, :, head] @ cache[key]
            return z

        return {Site(self.layer, "attn.hook_z"): [fn]}


@torch.no_grad()
def edited_copy(model: "Model", edits: Sequence[ChannelEdit]) -> PreTrainedModel:
    """A float32 copy of the HF model with the channel edits made in the heads' W_O (the model is untouched)."""
    if not edits:
        raise InterpError("no channel edits given; pass at least one ChannelEdit")
    hf = copy.deepcopy(model.hf).float()
    layers = hf.get_submodule(model.family.layers)
    for e in edits:
        lin, cols = _o_proj_block(model, e.layer, e.head)
        w_o = lin.weight[:, cols].mT.double()  # [dh, d]
        v = _in_write_space(w_o, torch.as_tensor(e.directions).reshape(-1, model.d_model).double().to(w_o.device),
                            e.layer, e.head)
        new = w_o - (1 - e.scale) * (w_o @ v) @ v.mT
        target = layers[e.layer].get_submodule(model.family.o_proj)
        target.weight[:, cols] = new.mT.to(target.weight.dtype)
    return hf


def export_channel_edits(model: "Model", edits: Sequence[ChannelEdit], out_dir: str | os.PathLike) -> Path:
    """Write a checkpoint with the channel edits in its weights (loads with plain transformers), atomically."""
    from interp.steering.orthogonalize import check_export_dir, write_checkpoint

    check_export_dir(out_dir)
    hf = edited_copy(model, edits)
    meta = {"source_model": model.fingerprint,
            "edits": [{"layer": e.layer, "head": e.head, "scale": e.scale,
                       "directions": torch.as_tensor(e.directions).reshape(-1, model.d_model).tolist()} for e in edits]}
    return write_checkpoint(hf, model.tokenizer, out_dir, "interp_channel_edits.json", meta)


# ----- the inhibition score: a channel checked on data -----

def token_positions(ids: Sequence[int], token: int) -> list[int]:
    """The positions of `ids` holding `token`."""
    return [i for i, t in enumerate(ids) if t == token]


@torch.no_grad()
def attention_to_tokens(model: "Model", prompts: Sequence[str], receiver: tuple[int, int], tokens: Tensor,
                        edits: Sequence[ChannelEdit] = (), chat: bool = False, batch_size: int = 16
                        ) -> Float[Tensor, "n g"]:
    """The receiver head's attention at each prompt's last token to each of `tokens` ([n, g] token ids, one row
    per prompt), summed over every position holding that token, under `edits` (none: the clean run). Every token
    must occur in its prompt (an InterpError names the first that does not)."""
    layer, head = receiver
    check_head(layer, head, model.n_layers, model.n_heads)
    tokens = torch.as_tensor(tokens).reshape(len(prompts), -1)
    ids = model.encode(model.prepare_prompts(prompts, chat=chat))
    cols: list[list[list[int]]] = []
    width = max(len(row) for row in ids)
    for i, row in enumerate(ids):
        cols.append([])
        for t in tokens[i].tolist():
            where = token_positions(row, t)
            if not where:
                raise InterpError(f"prompt {i} ({prompts[i]!r}) does not contain the token "
                                  f"{model.tokenizer.convert_ids_to_tokens([t])} whose attention is read")
            cols[i].append([width - len(row) + p for p in where])  # captured patterns are left-padded to `width`
    site = f"blocks.{layer}.attn.hook_pattern"
    with model.intervene(*edits):
        pattern = model.capture(list(prompts), site, positions="last", chat=chat, batch_size=batch_size,
                                progress=False)[site]  # [n, head, key]
    if pattern.shape[-1] != width:
        raise InterpError(f"the captured attention has {pattern.shape[-1]} key positions, the prompts {width}")
    row_h = pattern[:, head]
    return torch.tensor([[float(row_h[i, c].sum()) for c in groups] for i, groups in enumerate(cols)])


@dataclass(frozen=True)
class Inhibition:
    """The inhibition score of one channel (module doc) and the attentions it comes from, per item."""

    components: tuple[int, ...]
    scale: float
    clean: Float[Tensor, "n 2"]  # the receiver's attention to (target, inhibited), clean run
    edited: Float[Tensor, "n 2"]  # the same with the channel edited

    @property
    def per_item(self) -> Float[Tensor, "n"]:
        """gap(clean) - gap(edited) per item, gap = a(target) - a(inhibited)."""
        return (self.clean[:, 0] - self.clean[:, 1]) - (self.edited[:, 0] - self.edited[:, 1])

    @property
    def score(self) -> float:
        return float(self.per_item.mean())

    def summary(self) -> dict:
        gap_clean = self.clean[:, 0] - self.clean[:, 1]
        return {"components": list(self.components), "scale": self.scale, "score": self.score,
                "score_std": float(self.per_item.std()) if len(self.per_item) > 1 else 0.0,
                "items": len(self.per_item), "clean_gap": float(gap_clean.mean()),
                "edited_gap": float((self.edited[:, 0] - self.edited[:, 1]).mean()),
                "inhibited_attention_change": float((self.edited[:, 1] - self.clean[:, 1]).mean()),
                "target_attention_change": float((self.edited[:, 0] - self.clean[:, 0]).mean())}


@torch.no_grad()
def inhibition_scores(model: "Model", prompts: Sequence[str], target: Tensor, inhibited: Tensor,
                      sender: tuple[int, int], receiver: tuple[int, int], channels: Sequence[Sequence[int]],
                      svds: HeadSVDs | None = None, scale: float = 0.0, chat: bool = False,
                      batch_size: int = 16) -> list[Inhibition]:
    """The inhibition score (module doc) of each channel of `channels` (lists of the sender's OV components; an
    empty list edits nothing and scores zero) between `sender` and the later `receiver`, on `prompts` with their
    `target` and `inhibited` token ids ([n] each). One clean run serves every channel."""
    if sender[0] >= receiver[0]:
        raise InterpError(f"head {sender[0]}.{sender[1]} cannot send to head {receiver[0]}.{receiver[1]}: the sender's "
                          "layer must be earlier than the receiver's")
    check_head(*sender, model.n_layers, model.n_heads)
    target, inhibited = torch.as_tensor(target).flatten(), torch.as_tensor(inhibited).flatten()
    if not len(prompts) == len(target) == len(inhibited) or not len(prompts):
        raise InterpError(f"got {len(prompts)} prompts, {len(target)} target and {len(inhibited)} inhibited tokens; "
                          "give one of each per prompt (at least one prompt)")
    svds = svds if svds is not None else head_svds(model)
    tokens = torch.stack([target, inhibited], -1)
    clean = attention_to_tokens(model, prompts, receiver, tokens, chat=chat, batch_size=batch_size)
    out = []
    for components in channels:
        components = tuple(int(c) for c in components)
        edits = [ChannelEdit(*sender, write_directions(svds, *sender, components), scale)] if components else []
        edited = attention_to_tokens(model, prompts, receiver, tokens, edits, chat=chat, batch_size=batch_size) \
            if edits else clean.clone()
        out.append(Inhibition(components, float(scale), clean, edited))
    return out


__all__ = ["SVD", "FactoredMatrix", "HeadWeights", "HeadSVDs", "Composition", "ChannelEdit", "MODES", "head_weights",
           "head_svds", "composition", "random_baseline", "write_directions", "edited_copy", "export_channel_edits",
           "check_head", "scores_from_components", "component_shares", "token_positions", "attention_to_tokens",
           "Inhibition", "inhibition_scores"]


# The prefix cache may run a shared prefix under this edit: it acts alike at every token and every row.
register_rule(ChannelEdit, SAME_EVERYWHERE)
