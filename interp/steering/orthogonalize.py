"""Weight orthogonalisation (Arditi et al. 2024): bake directional ablation into the weights.

Every matrix that writes into the residual stream (token and position embeddings, the attention output
projection and the MLP output projection of every layer) is replaced by its projection onto the orthogonal
complement of the subspace: W_out <- W_out - B^T B W_out. The residual stream then never carries the
subspace, which is what the `Ablate` intervention does with hooks. The edit is made on a copy and saved as
an ordinary HF checkpoint that plain `transformers` loads; tied input/output embeddings are untied so the
unembedding stays as it was.

Weighted, per-layer edits (heretic's abliteration, `analyses.abliteration`): each layer may have its own
direction and each layer's attention and MLP output projections their own weight w, W <- W - w r r^T W; the
hook twin is `interp.core.interventions.WeightedAblate`. Weights all 1 with one subspace is the plain edit above.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from interp.core.subspace import Subspace
from interp.errors import InterpError
from interp.io import write_json

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from interp.core.model import Model


def _project_out_rows(w: Tensor, b: Tensor, scale: float = 1.0) -> Tensor:
    """For a weight whose rows live in the residual space ([*, d] embeddings): w - scale (w B^T) B."""
    return w - scale * ((w @ b.T) @ b) if scale != 1.0 else w - (w @ b.T) @ b


def _project_out_cols(w: Tensor, b: Tensor, scale: float = 1.0) -> Tensor:
    """For a Linear weight [d_out = d, d_in] writing into the residual stream: w - scale B^T (B w)."""
    return w - scale * (b.T @ (b @ w)) if scale != 1.0 else w - b.T @ (b @ w)


COMPONENTS = ("attn", "mlp")  # the per-layer writes a weighted edit scales: o_proj (attention), down_proj (MLP)


def _check_weights(model: "Model", weights: dict[str, Sequence[float]] | None) -> dict[str, list[float]]:
    """Per-layer, per-component weights {"attn": [n_layers], "mlp": [n_layers]}; None means 1 everywhere."""
    n = model.n_layers
    if weights is None:
        return {c: [1.0] * n for c in COMPONENTS}
    if not isinstance(weights, dict) or set(weights) != set(COMPONENTS):
        got = sorted(weights) if isinstance(weights, dict) else type(weights).__name__
        raise InterpError(f"weights must be a dict with the keys 'attn' and 'mlp' (one weight per layer each), got {got}")
    out = {}
    for c in COMPONENTS:
        w = [float(x) for x in weights[c]]
        if len(w) != n or not all(torch.isfinite(torch.tensor(w))):
            raise InterpError(f"weights[{c!r}] must hold {n} finite numbers (one per layer of {model.name}), "
                              f"got {len(w)}")
        out[c] = w
    return out


def _layer_bases(model: "Model", subspace: Subspace | Tensor) -> list[Tensor]:
    """One orthonormal basis [k, d] per layer: the same subspace for all, or per-layer unit directions [n_layers, d]."""
    if isinstance(subspace, Subspace):
        subspace.check_for(model)
        return [subspace.basis.float()] * model.n_layers
    if not isinstance(subspace, Tensor) or subspace.shape != (model.n_layers, model.d_model):
        shape = tuple(subspace.shape) if isinstance(subspace, Tensor) else type(subspace).__name__
        raise InterpError(f"give a Subspace or per-layer directions of shape [{model.n_layers}, {model.d_model}] "
                          f"(n_layers, d_model of {model.name}), got {shape}")
    d = subspace.float()
    if not torch.isfinite(d).all() or (d.norm(dim=-1) == 0).any():
        raise InterpError("the per-layer directions contain NaN, inf or a zero vector")
    return list((d / d.norm(dim=-1, keepdim=True)).unsqueeze(1))


@torch.no_grad()
def orthogonalized_copy(model: "Model", subspace: Subspace | Float[Tensor, "layer d"],
                        weights: dict[str, Sequence[float]] | None = None, embed: bool | None = None) -> PreTrainedModel:
    """A copy of the HF model with the subspace removed from every residual-stream write.

    `subspace`: one Subspace for every layer, or per-layer directions [n_layers, d] (heretic's per-layer
    abliteration). `weights` {"attn": [n_layers], "mlp": [n_layers]} scale the edit of each layer's attention
    output projection and MLP down projection: W <- W - w B^T B W (w = 1 removes the subspace, 0 leaves the
    matrix alone; None = 1 everywhere). `embed`: also orthogonalise the token (and position) embedding (default:
    yes for one Subspace, as Arditi et al.; per-layer directions have no embedding direction, so no). With a
    Subspace, no weights and the default `embed`, this is the plain directional ablation of `Ablate`; with
    per-layer directions and weights it matches `interp.core.interventions.WeightedAblate`.
    """
    bases = _layer_bases(model, subspace)
    w = _check_weights(model, weights)
    if embed is None:
        embed = isinstance(subspace, Subspace)
    if embed and not isinstance(subspace, Subspace):
        raise InterpError("embed=True needs one Subspace: per-layer directions say nothing about the embedding")
    fam = model.family
    if "post_attention_layernorm" in fam.sites["hook_attn_out"][0]:
        raise InterpError(f"{model.hf.config.model_type} normalises attention/MLP outputs after the projection, so "
                          "orthogonalising weights is not equivalent to ablation; use the Ablate intervention instead")
    hf = copy.deepcopy(model.hf).float()
    if getattr(hf.config, "tie_word_embeddings", False):
        out = hf.get_output_embeddings()
        out.weight = nn.Parameter(out.weight.detach().clone())
        hf.config.tie_word_embeddings = False
    if embed:
        b = bases[0].to(model.device)
        emb = hf.get_submodule(fam.embed)
        emb.weight.copy_(_project_out_rows(emb.weight, b))
        if fam.conv1d and hasattr(hf, "transformer") and hasattr(hf.transformer, "wpe"):
            hf.transformer.wpe.weight.copy_(_project_out_rows(hf.transformer.wpe.weight, b))
    for i, layer in enumerate(hf.get_submodule(fam.layers)):
        b = bases[i].to(model.device)
        for comp, path in zip(COMPONENTS, (fam.o_proj, fam.down_proj)):
            scale = w[comp][i]
            if scale == 0:
                continue
            lin = layer.get_submodule(path)
            if not isinstance(getattr(lin, "weight", None), torch.Tensor):  # a mixture of experts' fused weights
                raise InterpError(f"{model.hf.config.model_type} has no single {comp} output projection to "
                                  f"orthogonalise (a mixture of experts); give {comp} weights 0 or use the Ablate "
                                  "intervention instead")
            if fam.conv1d:  # Conv1D stores [d_in, d_out]
                lin.weight.copy_(_project_out_rows(lin.weight, b, scale))
            else:
                lin.weight.copy_(_project_out_cols(lin.weight, b, scale))
            if getattr(lin, "bias", None) is not None:
                lin.bias.copy_(_project_out_rows(lin.bias.unsqueeze(0), b, scale).squeeze(0))
    return hf


def check_export_dir(out_dir: str | os.PathLike) -> Path:
    """The folder for an exported checkpoint: new or empty (checked before any work is done)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InterpError(f"{out_dir} exists and is not empty; choose a new folder for the exported checkpoint")
    return out_dir


def write_checkpoint(hf: PreTrainedModel, tokenizer, out_dir: str | os.PathLike, sidecar: str, meta: dict) -> Path:
    """Write an HF model (weights, config), its tokenizer and a JSON sidecar to `out_dir`, atomically: a
    temporary folder beside it is renamed into place only when everything is written."""
    out_dir = check_export_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp"))
    try:
        hf.save_pretrained(str(work))
        tokenizer.save_pretrained(str(work))
        write_json(work / sidecar, meta)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(work, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def export_orthogonalized(model: "Model", subspace: Subspace, out_dir: str | os.PathLike) -> Path:
    """Write the orthogonalised checkpoint (weights, config, tokenizer) to `out_dir`, atomically."""
    check_export_dir(out_dir)
    hf = orthogonalized_copy(model, subspace)
    return write_checkpoint(hf, model.tokenizer, out_dir, "interp_orthogonalized.json",
                            {"source_model": model.fingerprint, "direction": subspace.provenance})
