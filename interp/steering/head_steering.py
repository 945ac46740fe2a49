"""`HeadSteering`: add `alpha * sigma_h * direction_h` to chosen attention heads' outputs (ITI's intervention).

Li et al. 2023 (*Inference-Time Intervention*) shift a few heads' outputs along a truthful direction: for each
chosen (layer, head) a unit direction in the head's d_head space and the standard deviation sigma of training
activations along it; the intervention adds alpha * sigma * direction to that head's output, before the attention
output projection (`attn.hook_z`, the input of `o_proj`), for every batch row. Other heads are untouched.

Where it acts (`positions`):
- "last" (default, the reference's): the last token of each forward only. Generating, that is the prompt's last
  token and then each newly generated token (every KV-cached step is a forward of one token); left padding puts
  every row's last token in the last column. This is what honest_llama does when it generates (`tqa_run_answers`
  edits with `start_edit_location='lt'`, i.e. position -1; its pyvene `ITI_Intervener` edits `b[0, -1]` of every
  forward). The reference scores multiple choice differently: one forward of the whole "question + answer" with
  the shift from the answer's tokens on (`tqa_run_probs`, `start_edit_location`); `analyses.truthful` does that
  with `interp.core.likelihood.continuations(..., continuation_edits=[steering.at("all")])`, which confines an
  intervention to the continuation's tokens. A "last" forward over a whole text moves only its last position.
- "all": every position of every forward, prompt and generated tokens alike. The reference's README calls this
  form "not exactly a one-to-one comparison"; its capability cost (KL and CE on OpenWebText,
  `run_kl_wrt_orig`/`run_ce_loss` with `start_edit_location=0`) is measured this way, every token shifted as
  each would be were it generated.

The prefix KV cache (`interp.core.prefix`) treats "all" as acting alike at every token and row (the shared
prefix runs under it) and "last" as touching the final prompt token only (the prefix runs without it and always
leaves each row its last token), so both are exact with the cache on.

Saved as `head_steering.safetensors` (directions, sigmas, heads) + `head_steering.json` (alpha, positions, the
model's fingerprint, provenance: for `analyses.truthful`, the questions it was fitted on), each written
atomically; loading checks the model, the head indices and the shapes. A file written before `positions` was
recorded acted at every position, and loads as "all".
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from interp.core.hooks import HookFn
from interp.core.prefix import SAME_EVERYWHERE, PrefixRule, register_rule
from interp.core.sites import Site, check_head
from interp.errors import InterpError
from interp.io import read_artifact, write_json, write_tensors

if TYPE_CHECKING:
    from interp.core.model import Model

TENSORS = "head_steering.safetensors"
META = "head_steering.json"
FORMAT = "interp.steering.head_steering/1"
POSITIONS = ("last", "all")
LAST_TOKEN = PrefixRule(tail=1, rows=False)  # "last": the final prompt token only, alike on every row


@dataclass(frozen=True)
class HeadSteering:
    """Shift heads[i] = (layer, head) by alpha * sigmas[i] * directions[i] (directions are normalised here), at
    the last token of each forward (`positions="last"`) or at every position ("all"); see the module docstring."""

    heads: Sequence[tuple[int, int]]
    directions: Float[Tensor, "k d_head"]
    sigmas: Float[Tensor, "k"]
    alpha: float = 15.0
    provenance: dict = field(default_factory=dict, compare=False)
    positions: str = "last"

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
        if self.positions not in POSITIONS:
            raise InterpError(f"HeadSteering positions must be 'last' (the last token of each forward, the "
                              f"reference's) or 'all' (every position), got {self.positions!r}")
        object.__setattr__(self, "heads", heads)
        object.__setattr__(self, "directions", d if torch.allclose(norms, torch.ones_like(norms), atol=1e-6) else d / norms)
        object.__setattr__(self, "sigmas", s)

    @property
    def k(self) -> int:
        return len(self.heads)

    def at(self, positions: str) -> "HeadSteering":
        """The same shift acting at `positions` ("last" or "all")."""
        return dataclasses.replace(self, positions=positions)

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
        last = self.positions == "last"
        for layer, offset in self.offsets(model).items():
            cache: dict = {}

            def fn(site: Site, x: Tensor, offset=offset, cache=cache) -> Tensor:
                key = (x.device, x.dtype)
                if key not in cache:
                    cache[key] = offset.to(device=x.device, dtype=x.dtype)
                if not last:
                    return x + cache[key]  # x: [batch, pos, head, d_head]
                x = x.clone()
                x[:, -1] += cache[key]  # left padding: every row's last token is the last column
                return x

            out[Site(layer, "attn.hook_z")] = [fn]
        return out

    # ----- persistence: safetensors + JSON -----
    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        write_tensors(directory / TENSORS, {"directions": self.directions, "sigmas": self.sigmas,
                                            "heads": torch.tensor(self.heads, dtype=torch.long)})
        write_json(directory / META, {"format": FORMAT, "alpha": self.alpha, "k": self.k, "positions": self.positions,
                                      "provenance": self.provenance})
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
                  float(meta["alpha"]), meta.get("provenance", {}), meta.get("positions", "all"))
        if model is not None:
            out.check_for(model)
        return out


def is_saved(directory: str | os.PathLike) -> bool:
    return (Path(directory) / META).is_file()


def _prefix_rule(steering: HeadSteering) -> PrefixRule:
    """With positions "all" it acts alike at every token and row: a shared prefix runs under it. With "last" it
    touches only the final prompt token: the prefix runs without it and leaves every row that token."""
    return SAME_EVERYWHERE if steering.positions == "all" else LAST_TOKEN


register_rule(HeadSteering, _prefix_rule)
