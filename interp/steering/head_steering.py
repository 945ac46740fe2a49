"""`HeadSteering`: add `alpha * sigma_h * direction_h` to chosen attention heads' outputs (ITI's intervention).

Li et al. 2023 (*Inference-Time Intervention*) shift a few heads' outputs along a truthful direction: for each
chosen (layer, head) a unit direction in the head's d_head space and the standard deviation sigma of training
activations along it; the intervention adds alpha * sigma * direction to that head's output, before the attention
output projection (`attn.hook_z`, the input of `o_proj`), at every position of the prompt and of every generated
token, for every batch row. Other heads are untouched. It is position- and row-independent, so a shared prompt
prefix runs under it and KV-cached generation sees it at every step.

Saved as `head_steering.safetensors` (directions, sigmas, heads) + `head_steering.json` (alpha, the model's
fingerprint, provenance), each written atomically; loading checks the model, the head indices and the shapes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from interp.core.hooks import HookFn
from interp.core.prefix import SAME_EVERYWHERE, register_rule
from interp.core.sites import Site, check_head
from interp.errors import InterpError
from interp.io import read_artifact, write_json, write_tensors

if TYPE_CHECKING:
    from interp.core.model import Model

TENSORS = "head_steering.safetensors"
META = "head_steering.json"
FORMAT = "interp.steering.head_steering/1"


@dataclass(frozen=True)
class HeadSteering:
    """Shift heads[i] = (layer, head) by alpha * sigmas[i] * directions[i] (directions are normalised here)."""

    heads: Sequence[tuple[int, int]]
    directions: Float[Tensor, "k d_head"]
    sigmas: Float[Tensor, "k"]
    alpha: float = 15.0
    provenance: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        heads = [(int(layer), int(head)) for layer, head in self.heads]
        if not heads:
            raise InterpError("HeadSteering needs at least one (layer, head)")
        if len(set(heads)) != len(heads):
            raise InterpError("HeadSteering heads must be distinct (layer, head) pairs")
        d, s = torch.as_tensor(self.directions, dtype=torch.float32), torch.as_tensor(self.sigmas, dtype=torch.float32)
        if d.ndim != 2 or d.shape[0] != len(heads) or s.shape != (len(heads),):
            raise InterpError(f"HeadSteering needs directions [k, d_head] and sigmas [k] for k = {len(heads)} heads, "
                              f"got {tuple(d.shape)} and {tuple(s.shape)}")
        norms = d.norm(dim=1, keepdim=True)
        if not torch.isfinite(d).all() or not torch.isfinite(s).all() or (norms == 0).any():
            raise InterpError("HeadSteering directions must be finite and non-zero, sigmas finite")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool):
            raise InterpError(f"alpha must be a number, got {self.alpha!r}")
        object.__setattr__(self, "heads", heads)
        object.__setattr__(self, "directions", d if torch.allclose(norms, torch.ones_like(norms), atol=1e-6) else d / norms)
        object.__setattr__(self, "sigmas", s)

    @property
    def k(self) -> int:
        return len(self.heads)

    def check_for(self, model: "Model") -> None:
        fingerprint = self.provenance.get("model")
        if fingerprint:
            model.check_compatible(fingerprint, "this head-steering intervention")
        for layer, head in self.heads:
            check_head(layer, head, model.n_layers, model.n_heads)
        if self.directions.shape[1] != model.d_head:
            raise InterpError(f"the head directions have width {self.directions.shape[1]}, but {model.name}'s heads "
                              f"have d_head {model.d_head}; fit them on this model")

    def offsets(self, model: "Model") -> dict[int, Float[Tensor, "head d_head"]]:
        """Per layer, the [n_heads, d_head] shift (zero for the heads not chosen)."""
        self.check_for(model)
        out: dict[int, Tensor] = {}
        shift = self.alpha * self.sigmas[:, None] * self.directions
        for (layer, head), v in zip(self.heads, shift):
            out.setdefault(layer, torch.zeros(model.n_heads, model.d_head))[head] += v
        return out

    def hooks(self, model: "Model") -> dict[Site, list[HookFn]]:
        out: dict[Site, list[HookFn]] = {}
        for layer, offset in self.offsets(model).items():
            cache: dict = {}

            def fn(site: Site, x: Tensor, offset=offset, cache=cache) -> Tensor:
                key = (x.device, x.dtype)
                if key not in cache:
                    cache[key] = offset.to(device=x.device, dtype=x.dtype)
                return x + cache[key]  # x: [batch, pos, head, d_head]

            out[Site(layer, "attn.hook_z")] = [fn]
        return out

    # ----- persistence: safetensors + JSON -----
    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        write_tensors(directory / TENSORS, {"directions": self.directions, "sigmas": self.sigmas,
                                            "heads": torch.tensor(self.heads, dtype=torch.long)})
        write_json(directory / META, {"format": FORMAT, "alpha": self.alpha, "k": self.k, "provenance": self.provenance})
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, model: "Model | None" = None) -> "HeadSteering":
        """Load a saved intervention; with `model`, refuse one fitted on another model or shape."""
        directory = Path(directory)
        meta, tensors = read_artifact(directory, META, TENSORS, FORMAT, "head-steering intervention",
                                      ("directions", "sigmas", "heads"))
        if tensors["heads"].shape[0] != meta.get("k"):
            raise InterpError(f"{directory / TENSORS} holds {tensors['heads'].shape[0]} heads but {META} says "
                              f"{meta.get('k')}; the two files do not belong together")
        out = cls([tuple(h) for h in tensors["heads"].tolist()], tensors["directions"], tensors["sigmas"],
                  float(meta["alpha"]), meta.get("provenance", {}))
        if model is not None:
            out.check_for(model)
        return out


def is_saved(directory: str | os.PathLike) -> bool:
    return (Path(directory) / META).is_file()


# The prefix cache may run a shared prefix under this edit: it acts alike at every token and every row.
register_rule(HeadSteering, SAME_EVERYWHERE)
