"""`interp.load(source)`: a bundled model name, a local HF folder, a `.gguf` file, or a hub id."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from interp.core.model import Model
from interp.core.sites import Family
from interp.data.registry import BUNDLED, DEFAULT_MODEL, READY_MARKER, _convert_gguf, build_folder, cache_dir, prepare
from interp.errors import InterpError


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """fp32 on a CPU (where bf16 is slower), bf16 on a GPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _gguf_folder(path: Path) -> Path:
    """Convert a GGUF file once into an HF folder in the cache, keyed by the file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    target = cache_dir() / "gguf" / f"{path.stem}-{digest.hexdigest()[:16]}"
    if not (target / READY_MARKER).is_file():
        def build(work: Path) -> dict:
            os.symlink(path.resolve(), work / path.name)
            _convert_gguf(work / path.name, work / "hf", progress=True)
            return {"source": str(path), "sha256": digest.hexdigest()}

        build_folder(target, build)
    return target


def resolve(source: str | os.PathLike) -> tuple[str, str]:
    """Return (name, folder-or-hub-id) for a source."""
    src = str(source)
    if src in BUNDLED:
        return src, str(prepare(src))
    path = Path(src).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InterpError(f"{path} is a folder without config.json; give an HF model folder, a .gguf file or one of {', '.join(BUNDLED)}")
        return path.name, str(path)
    if src.endswith(".gguf"):
        if not path.is_file():
            raise InterpError(f"GGUF file {path} does not exist")
        return path.stem, str(_gguf_folder(path))
    if path.exists():
        raise InterpError(f"{path} is neither an HF folder nor a .gguf file")
    if src.count("/") != 1 or src.startswith(("/", ".")):
        raise InterpError(
            f"model {src!r} is not a bundled model ({', '.join(BUNDLED)}), an existing folder, a .gguf file, or a hub id (owner/name)"
        )
    return src, src


def load(source: str | os.PathLike = DEFAULT_MODEL, *, backend: str = "hooks", dtype: torch.dtype | str | None = None,
         device: str | torch.device | None = None, remote: bool = False, family: Family | str | None = None,
         device_map: str | dict | None = None, offload_folder: str | os.PathLike | None = None) -> Model:
    """Load a causal LM for analysis. By default fp32 on a CPU, bf16 on a GPU, the GPU when there is one.

    backend: "hooks" (plain torch hooks, the default), "transformer_lens" (TransformerBridge) or "nnsight";
    remote=True sends nnsight traces to NDIF (for models larger than one machine). family: see `Model` ("native"
    for an architecture without a site table). device_map (with offload_folder where it names "disk"): the model is
    dispatched over several devices by accelerate, as `from_pretrained(device_map=...)` does, instead of moved to
    `device`; `Model.device` is then where its inputs go, and captures land on the CPU as always.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from interp.core.backends import BACKENDS

    if backend not in BACKENDS:
        raise InterpError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    name, where = resolve(source)
    device = torch.device(device) if device is not None else default_device()
    if isinstance(dtype, str):
        if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
            raise InterpError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
        dtype = getattr(torch, dtype)
    dtype = dtype or default_dtype(device)
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a sub-second "Loading weights" bar is noise; restored below
    try:
        tok = AutoTokenizer.from_pretrained(where)
        placement = {} if device_map is None else {"device_map": device_map, "offload_folder": offload_folder}
        hf = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **placement)
    except OSError as e:
        if where == source and not Path(where).exists():
            raise InterpError(
                f"could not fetch {source!r} from the model hub ({e.__class__.__name__}); the hub may be unreachable "
                f"from this machine: use a bundled model ({', '.join(BUNDLED)}), a local folder or a .gguf file"
            ) from e
        raise
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    if device_map is None:
        hf.to(device)  # type: ignore[arg-type]  # transformers wraps `to` with functools.wraps, typed as an unbound _Wrapped
    hf.requires_grad_(False)
    if remote and backend != "nnsight":
        raise InterpError("remote=True needs backend='nnsight' (the trace is what runs remotely)")
    return Model(hf, tok, name=name, backend=backend, source=where, backend_options={"remote": remote} if remote else None,
                 family=family)
