"""Weight orthogonalisation (Arditi et al. 2024): bake directional ablation into the weights.

Every matrix that writes into the residual stream (token and position embeddings, the attention output
projection and the MLP output projection of every layer) is replaced by its projection onto the orthogonal
complement of the subspace: W_out <- W_out - B^T B W_out. The residual stream then never carries the
subspace, which is what the `Ablate` intervention does with hooks. The edit is made on a copy and saved as
an ordinary HF checkpoint that plain `transformers` loads; tied input/output embeddings are untied so the
unembedding stays as it was.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from interp.errors import InterpError
from interp.io import write_json
from interp.subspace import Subspace

if TYPE_CHECKING:
    from interp.model import Model


def _project_out_rows(w: Tensor, b: Tensor) -> Tensor:
    """For a weight whose rows live in the residual space ([*, d] embeddings): w - (w B^T) B."""
    return w - (w @ b.T) @ b


def _project_out_cols(w: Tensor, b: Tensor) -> Tensor:
    """For a Linear weight [d_out = d, d_in] writing into the residual stream: w - B^T (B w)."""
    return w - b.T @ (b @ w)


@torch.no_grad()
def orthogonalized_copy(model: "Model", subspace: Subspace) -> nn.Module:
    """A copy of the HF model with the subspace removed from every residual-stream write."""
    subspace.check_for(model)
    fam = model.family
    if "post_attention_layernorm" in fam.sites["hook_attn_out"][0]:
        raise InterpError(f"{model.hf.config.model_type} normalises attention/MLP outputs after the projection, so "
                          "orthogonalising weights is not equivalent to ablation; use the Ablate intervention instead")
    hf = copy.deepcopy(model.hf).float()
    b = subspace.basis.float().to(model.device)
    if getattr(hf.config, "tie_word_embeddings", False):
        out = hf.get_output_embeddings()
        out.weight = nn.Parameter(out.weight.detach().clone())
        hf.config.tie_word_embeddings = False
    embed = hf.get_submodule(fam.embed)
    embed.weight.copy_(_project_out_rows(embed.weight, b))
    if fam.conv1d and hasattr(hf, "transformer") and hasattr(hf.transformer, "wpe"):
        hf.transformer.wpe.weight.copy_(_project_out_rows(hf.transformer.wpe.weight, b))
    for layer in hf.get_submodule(fam.layers):
        for path in (fam.o_proj, fam.down_proj):
            lin = layer.get_submodule(path)
            if fam.conv1d:  # Conv1D stores [d_in, d_out]
                lin.weight.copy_(_project_out_rows(lin.weight, b))
            else:
                lin.weight.copy_(_project_out_cols(lin.weight, b))
            if getattr(lin, "bias", None) is not None:
                lin.bias.copy_(_project_out_rows(lin.bias.unsqueeze(0), b).squeeze(0))
    return hf


def check_export_dir(out_dir: str | os.PathLike) -> Path:
    """The folder for an exported checkpoint: new or empty (checked before any work is done)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InterpError(f"{out_dir} exists and is not empty; choose a new folder for the exported checkpoint")
    return out_dir


def write_checkpoint(hf: nn.Module, tokenizer, out_dir: str | os.PathLike, sidecar: str, meta: dict) -> Path:
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
