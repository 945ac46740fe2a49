"""`Activations`: captured tensors per site, with their prompts and labels; saved as safetensors + JSON."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from interp.core.sites import KINDS, Site, parse_sites
from interp.errors import InterpError
from interp.io import read_meta, read_tensors, write_json, write_tensors

TENSORS = "activations.safetensors"
META = "activations.json"


@dataclass
class Activations:
    """One tensor per site name, rows aligned with `prompts` (and `labels`)."""

    acts: dict[str, Tensor]
    prompts: list[str]
    labels: list[Any] | None = None
    positions: Any = "last"
    model: dict = field(default_factory=dict)  # the fingerprint of the model that produced them
    mask: Tensor | None = None  # [n, seq] for positions="all"
    position_tokens: list[str] | None = None  # the eoi tokens, for positions="eoi"
    system: str | None = None  # the system prompt the prompts were chat-formatted with (`system_record`); None: raw prompts

    def __post_init__(self) -> None:
        for name, t in self.acts.items():
            if t.shape[0] != len(self.prompts):
                raise InterpError(f"site {name} has {t.shape[0]} rows for {len(self.prompts)} prompts")

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, site: str | Site) -> Tensor:
        name = str(site)
        if name not in self.acts:
            raise InterpError(f"site {name} was not captured; captured: {', '.join(self.acts)}")
        return self.acts[name]

    @property
    def sites(self) -> list[Site]:
        return parse_sites(list(self.acts), 10**6)

    def layers(self, kind: str = "hook_resid_post") -> list[int]:
        return sorted(s.layer for s in self.sites if s.kind == kind)

    def stack(self, sites: str | Site | Sequence[str | Site] = "hook_resid_post") -> Float[Tensor, "n site ..."]:
        """Captured sites stacked on dim 1. A kind (`"hook_resid_post"`, `"resid_post"`, `"blocks.*.hook_z"`) means
        every captured layer of it, in layer order; site names (`"blocks.10.hook_resid_post"`, or a list) mean those
        sites in the order given ([n, 1, ...] for one name; `acts[name]` is that site's tensor without the new dim)."""
        names: list[str] = []
        for item in [sites] if isinstance(sites, (str, Site)) else list(sites):
            if isinstance(item, str) and item in self.acts:  # a captured site's name (a native site's too)
                names.append(item)
            elif isinstance(item, str) and not re.match(r"blocks\.\d+\.", item):  # a kind: every captured layer
                try:
                    kind = parse_sites(item, 1)[0].kind
                except InterpError:
                    raise InterpError(f"{item!r} is neither a site kind ({', '.join(KINDS)}) nor a site name like "
                                      "'blocks.10.hook_resid_post'") from None
                found = [f"blocks.{i}.{kind}" for i in self.layers(kind)]
                if not found:
                    raise InterpError(f"no {kind} sites were captured; captured: {', '.join(self.acts)}")
                names += found
            else:
                names += [s.name for s in parse_sites(item, 10**6)]
        missing = [n for n in names if n not in self.acts]
        if missing:
            raise InterpError(f"site {missing[0]} was not captured; captured: {', '.join(self.acts)}")
        shapes = {tuple(self.acts[n].shape) for n in names}
        if len(shapes) > 1:
            raise InterpError(f"sites {', '.join(names)} have different shapes {sorted(shapes)}; stack one kind at a time")
        return torch.stack([self.acts[n] for n in names], 1)

    def label_array(self) -> list[Any]:
        if self.labels is None:
            raise InterpError("these activations have no labels; pass labels= to capture")
        return self.labels

    def where(self, label: Any) -> "Activations":
        """Only the rows with this label."""
        rows = [i for i, lab in enumerate(self.label_array()) if lab == label]
        if not rows:
            raise InterpError(f"no rows with label {label!r}; labels present: {sorted(set(map(str, self.label_array())))}")
        return self.rows(rows)

    def rows(self, rows: Sequence[int]) -> "Activations":
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return Activations(
            {k: v[idx] for k, v in self.acts.items()}, [self.prompts[i] for i in rows],
            [self.labels[i] for i in rows] if self.labels is not None else None, self.positions, dict(self.model),
            self.mask[idx] if self.mask is not None else None, self.position_tokens, self.system,
        )

    def layer(self, layer: int) -> "Activations":
        """Only the sites of one layer."""
        keep = {k: v for k, v in self.acts.items() if k.startswith(f"blocks.{layer}.")}
        if not keep:
            raise InterpError(f"no sites of layer {layer} were captured; captured: {', '.join(self.acts)}")
        return Activations(keep, self.prompts, self.labels, self.positions, dict(self.model), self.mask, self.position_tokens,
                           self.system)

    # ----- persistence: safetensors + JSON, never pickle -----
    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        tensors = dict(self.acts)
        if self.mask is not None:
            tensors["__mask__"] = self.mask.to(torch.uint8)
        write_tensors(directory / TENSORS, tensors)
        write_json(directory / META, {
            "format": "interp.core.activations/1", "model": self.model, "prompts": self.prompts, "labels": self.labels,
            "positions": self.positions, "position_tokens": self.position_tokens, "sites": list(self.acts),
            "system": self.system,
        })
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, model=None) -> "Activations":
        """Load saved activations; with `model`, refuse activations captured from another model."""
        directory = Path(directory)
        meta = read_meta(directory, META, TENSORS, "interp.core.activations/1", "activations")
        tensors = read_tensors(directory / TENSORS)
        missing = [s for s in meta["sites"] if s not in tensors]
        if missing:
            raise InterpError(f"{directory / TENSORS} lacks sites {missing} listed in its JSON; the pair does not match")
        if model is not None:
            model.check_compatible(meta["model"], f"the activations in {directory}")
        mask = tensors.pop("__mask__", None)
        return cls({s: tensors[s] for s in meta["sites"]}, meta["prompts"], meta["labels"], meta["positions"],
                   meta["model"], mask.bool() if mask is not None else None, meta.get("position_tokens"), meta.get("system"))
