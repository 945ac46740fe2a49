"""Export steering directions as a llama.cpp control vector (GGUF), and read such files back.

The file layout is the one repeng's `ControlVector.export_gguf` writes and llama.cpp's control-vector loader
(`common_control_vector_load`, formerly `llama_control_vector_load`, used by `--control-vector`,
`--control-vector-scaled FILE S` and `--control-vector-layer-range A B`) reads:

- `general.architecture = "controlvector"`, `controlvector.model_hint` (a string; repeng writes the HF
  `model_type`), `controlvector.layer_count` (uint32: the number of direction tensors, as repeng writes it);
- one 1-D float32 tensor `direction.N` of length d_model per steered layer.

Layer numbering, checked in both sources:
- repeng adds `direction.{i}` to the output of `model.layers[i]` (0-based decoder blocks of the HF model);
- llama.cpp puts the data of `direction.N` in its per-layer tensor `N` and adds it, in every architecture's graph,
  to `l_out` of layer `il = N` (0-based), the residual stream after block N's attention and MLP; it rejects
  `direction.0` (and then skips the whole file) because the output of block 0 has no slot.

Our block index i is the 0-based HF block whose output is `blocks.{i}` / `Site(i, "hook_resid_post")`, which is
also `hook_resid_pre` of block i + 1. So the mapping is the identity, N = i: the direction added at
`hook_resid_post` of block i is written as `direction.{i}`. A direction meant for `hook_resid_pre` of block j is
`direction.{j-1}`. Block 0's output cannot be exported. llama.cpp adds the vector (times the scale) at every
token position, prompt included, like `interp.core.interventions.Add` at `hook_resid_post`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import InterpError
from interp.io import atomic_path

ARCH = "controlvector"
_MAGIC = b"GGUF"


def export_control_vector(directions: Mapping[int, Tensor] | Float[Tensor, "layers d"], path: str | os.PathLike,
                          model_hint: str, n_layers: int | None = None) -> Path:
    """Write `directions` as a llama.cpp control-vector GGUF at `path` (atomically) and return the path.

    `directions`: {block index i: vector [d]}, or a tensor [L, d] whose row i is block i (all-zero rows, such
    as an unused row 0, are left out: they steer nothing). The vectors are written as given (scale included);
    llama.cpp multiplies them by the `--control-vector-scaled` factor. `model_hint`: which model they are for
    (e.g. `model.hf.config.model_type` as repeng writes, or `model.name`). `n_layers`, when given, checks
    that every index is a layer llama.cpp can steer (1 .. n_layers - 1).
    """
    vectors = _as_dict(directions)
    if not isinstance(model_hint, str) or not model_hint.strip():
        raise InterpError("model_hint must be a non-empty string naming the model (e.g. its model_type)")
    if 0 in vectors:
        raise InterpError("direction for block 0 cannot be exported: llama.cpp has no slot for the output of block 0 "
                          "(it rejects direction.0 and skips the whole file); drop block 0")
    if n_layers is not None:
        bad = [i for i in vectors if i >= n_layers]
        if bad:
            raise InterpError(f"block indices {bad} are outside the model's {n_layers} layers (valid: 1..{n_layers - 1})")
    import gguf

    path = Path(path)
    with atomic_path(path, suffix=".gguf") as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", model_hint)
        writer.add_uint32(f"{ARCH}.layer_count", len(vectors))
        for i in sorted(vectors):
            writer.add_tensor(f"direction.{i}", vectors[i].numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def read_control_vector(path: str | os.PathLike) -> dict[int, Float[Tensor, "d"]]:
    """The directions of a control-vector GGUF, {N: float32 vector [d]} sorted by N (N = our block index)."""
    reader = _open(path)
    out: dict[int, Tensor] = {}
    for t in reader.tensors:
        prefix, _, index = t.name.partition(".")
        if prefix != "direction" or not index.isdigit():
            raise InterpError(f"{path}: tensor {t.name!r} is not named direction.N; this is not a control-vector file")
        data = np.asarray(t.data)
        if data.ndim != 1 or data.dtype != np.float32:
            raise InterpError(f"{path}: tensor {t.name} is {data.dtype} of shape {data.shape}, expected 1-D float32")
        out[int(index)] = torch.from_numpy(data.copy())
    if not out:
        raise InterpError(f"{path} holds no direction.N tensors")
    if len({v.shape[0] for v in out.values()}) != 1:
        raise InterpError(f"{path}: the direction tensors have different lengths")
    return dict(sorted(out.items()))


def read_model_hint(path: str | os.PathLike) -> str:
    """The `controlvector.model_hint` string of a control-vector GGUF."""
    field = _open(path).get_field(f"{ARCH}.model_hint")
    if field is None:
        raise InterpError(f"{path} has no {ARCH}.model_hint")
    return str(field.contents())


def _open(path: str | os.PathLike):
    import gguf

    path = Path(path)
    if not path.is_file():
        raise InterpError(f"control-vector file {path} does not exist")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != _MAGIC:
        raise InterpError(f"{path} is not a GGUF file (it does not start with b'GGUF'); expected a llama.cpp control vector")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as e:
        raise InterpError(f"{path} is a truncated or corrupt GGUF file ({e})") from e
    field = reader.get_field("general.architecture")
    arch = str(field.contents()) if field is not None else None
    if arch != ARCH:
        raise InterpError(f"{path} is a GGUF of architecture {arch!r}, not a control vector ({ARCH!r})")
    return reader


def _as_dict(directions) -> dict[int, Tensor]:
    if isinstance(directions, Tensor):
        if directions.ndim != 2:
            raise InterpError(f"directions must be a tensor [layers, d] or a dict {{block: [d]}}, got shape {tuple(directions.shape)}")
        items = {i: row for i, row in enumerate(directions) if bool(row.detach().abs().sum() > 0)}
    elif isinstance(directions, Mapping):
        items = dict(directions)
    else:
        raise InterpError(f"directions must be a tensor [layers, d] or a dict {{block: [d]}}, got {type(directions).__name__}")
    out: dict[int, Tensor] = {}
    for i, v in items.items():
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise InterpError(f"layer keys must be non-negative ints (0-based block indices), got {i!r}")
        v = torch.as_tensor(v).detach().float().cpu()
        if v.ndim != 1:
            raise InterpError(f"the direction of block {i} has shape {tuple(v.shape)}; expected a vector [d]")
        if not torch.isfinite(v).all():
            raise InterpError(f"the direction of block {i} has NaN or infinite values")
        out[i] = v.contiguous()
    if not out:
        raise InterpError("no directions to export (empty, or every row is zero)")
    dims = {v.shape[0] for v in out.values()}
    if len(dims) != 1:
        raise InterpError(f"directions have different lengths {sorted(dims)}; all must be d_model")
    return out
