"""`ConceptRouter`: per-prompt steering vectors picked by a probe (G-ACT's router), or one fixed vector (ACT-style).

G-ACT (Sharma and Raman 2025) steers a concept, here the programming language a code model writes, with a small
set of steering vectors per injection layer (cluster centroids of per-prompt activation differences) and a
per-layer probe that reads the prompt's activation and picks the vector to inject. This module holds the fitted
object and applies it; `analyses.concepts` fits it.

For each injection layer l (`hook_resid_pre` of block l, the stream entering the block):
- `centroids[l]`: k steering vectors [k, d];
- a softmax probe over the k vectors on the *unsteered* activation h at the prompt's last token:
  logits = ((h - center) / scale) @ weight^T + bias (the standardisation is part of the probe);
- at inference the probe picks c = argmax per prompt, and `alpha * centroids[l, c]` is added at every position of
  that prompt and of every token generated after it (`RowwiseAdd`, a different vector per batch row).
With k = 1 the probe has nothing to choose and the router is one fixed vector per layer (`Add`): the ACT-style
mean-difference baseline, in the same file format.

Routing takes one extra forward of the prompt, stopped after the deepest injection layer (`Model.capture`), to read
h; generation then runs under the picked vectors. `soft_interventions` instead injects the probabilities' mixture of
the vectors, differentiably in the probe's weights, which is what gradient refinement trains through.

Saved as `router.safetensors` (centroids, weight, bias, center, scale) + `router.json` (layers, alpha, the model's
fingerprint, provenance), both atomic; loading checks the files against each other and, given a model, the model.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.core.interventions import Add, Intervention, RowwiseAdd
from interp.errors import InterpError
from interp.io import read_artifact, write_json, write_tensors

if TYPE_CHECKING:
    from interp.core.model import Model

TENSORS = "router.safetensors"
META = "router.json"
FORMAT = "interp.steering.concept_router/1"
KIND = "hook_resid_pre"
_FIELDS = ("centroids", "weight", "bias", "center", "scale")


@dataclass(frozen=True)
class ConceptRouter:
    """k steering vectors per injection layer and a softmax probe per layer that picks one per prompt."""

    layers: tuple[int, ...]
    centroids: Float[Tensor, "layer k d"]
    weight: Float[Tensor, "layer k d"]  # probe weights, on standardised activations
    bias: Float[Tensor, "layer k"]
    center: Float[Tensor, "layer d"]
    scale: Float[Tensor, "layer d"]
    alpha: float = 1.0
    provenance: dict = field(default_factory=dict, compare=False)  # model fingerprint, target, method, ...

    def __post_init__(self) -> None:
        layers = tuple(int(i) for i in self.layers)
        if not layers or len(set(layers)) != len(layers):
            raise InterpError(f"a router needs one or more distinct injection layers, got {list(self.layers)}")
        c = self.centroids
        if not isinstance(c, Tensor) or c.ndim != 3 or c.shape[0] != len(layers) or c.shape[1] < 1:
            raise InterpError(f"centroids must be [layers={len(layers)}, k, d], got "
                              f"{tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__}")
        L, k, d = c.shape
        want = {"weight": (L, k, d), "bias": (L, k), "center": (L, d), "scale": (L, d)}
        for name, shape in want.items():
            t = getattr(self, name)
            if not isinstance(t, Tensor) or tuple(t.shape) != shape:
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise InterpError(f"router {name} must have shape {list(shape)} for {L} layers, k={k}, d={d}; got {got}")
        if not all(torch.isfinite(getattr(self, f).detach()).all() for f in _FIELDS) or not (self.scale > 0).all():
            raise InterpError("router tensors must be finite and its scale positive; the router is corrupt, fit it again")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool):
            raise InterpError(f"alpha must be a number, got {self.alpha!r}")
        object.__setattr__(self, "layers", layers)

    @classmethod
    def fixed(cls, vectors: Float[Tensor, "layer d"], layers: Sequence[int], alpha: float = 1.0,
              provenance: dict | None = None) -> "ConceptRouter":
        """One vector per layer and no choice to make (k = 1): ACT-style mean-difference steering."""
        v = torch.as_tensor(vectors, dtype=torch.float32)
        if v.ndim != 2:
            raise InterpError(f"vectors must be [layers, d], got shape {tuple(v.shape)}")
        L, d = v.shape
        return cls(tuple(layers), v[:, None], torch.zeros(L, 1, d), torch.zeros(L, 1), torch.zeros(L, d),
                   torch.ones(L, d), alpha, dict(provenance or {}))

    @property
    def k(self) -> int:
        return self.centroids.shape[1]

    @property
    def sites(self) -> list[str]:
        return [f"blocks.{layer}.{KIND}" for layer in self.layers]

    def with_probe(self, weight: Tensor, bias: Tensor) -> "ConceptRouter":
        """The same router with other probe weights (gradient refinement trains them)."""
        return dataclasses.replace(self, weight=weight, bias=bias)

    def check_for(self, model: "Model") -> None:
        fingerprint = self.provenance.get("model")
        if isinstance(fingerprint, dict) and fingerprint:
            model.check_compatible(fingerprint, "this router")
        if self.centroids.shape[-1] != model.d_model:
            raise InterpError(f"the router's vectors have width {self.centroids.shape[-1]}, but {model.name} has "
                              f"d_model {model.d_model}; fit it on this model")
        for layer in self.layers:
            model.check_layer(layer, "an injection layer")

    # ----- routing -----
    def activations(self, model: "Model", prompts: Sequence[str], batch_size: int = 16) -> Float[Tensor, "n layer d"]:
        """The unsteered activations the probes read: each injection layer's `hook_resid_pre` at the last token."""
        self.check_for(model)
        acts = model.capture(prompts, self.sites, positions="last", batch_size=batch_size, progress=False)
        return acts.stack(self.sites)

    def logits(self, acts: Float[Tensor, "n layer d"]) -> Float[Tensor, "n layer k"]:
        """The probes' logits over the k vectors (differentiable in `weight` and `bias`)."""
        if acts.ndim != 3 or acts.shape[1:] != (len(self.layers), self.centroids.shape[-1]):
            raise InterpError(f"activations must be [n, {len(self.layers)} layers, {self.centroids.shape[-1]}], "
                              f"got {tuple(acts.shape)}")
        x = (acts.float() - self.center) / self.scale
        return torch.einsum("nld,lkd->nlk", x, self.weight) + self.bias

    def choose(self, acts: Float[Tensor, "n layer d"]) -> Int[Tensor, "n layer"]:
        """The vector each probe picks for each prompt."""
        return self.logits(acts).argmax(-1)

    def vectors(self, choice: Int[Tensor, "n layer"]) -> Float[Tensor, "n layer d"]:
        """alpha * the chosen centroid, per prompt and layer."""
        index = torch.arange(len(self.layers))[None, :].expand_as(choice)
        return self.alpha * self.centroids[index, choice]

    def soft_vectors(self, acts: Float[Tensor, "n layer d"]) -> Float[Tensor, "n layer d"]:
        """alpha * the probes' probability-weighted mixture of the centroids (differentiable in the probes)."""
        return self.alpha * torch.einsum("nlk,lkd->nld", self.logits(acts).softmax(-1), self.centroids)

    def interventions(self, vectors: Float[Tensor, "n layer d"] | None = None) -> list[Intervention]:
        """Add `vectors[r, j]` to row r at layer j, every position. None (only for k = 1): the one fixed vector per
        layer, for any number of rows (`Add`: row-independent, so the shared prompt prefix can be cached)."""
        if vectors is None:
            if self.k != 1:
                raise InterpError(f"a router with k={self.k} vectors per layer needs each prompt's activations to pick "
                                  "one; use generate(model, prompts) or interventions(vectors(choose(acts)))")
            return [Add(self.centroids[j, 0], layer, self.alpha, KIND) for j, layer in enumerate(self.layers)]
        return [RowwiseAdd(vectors[:, j], [layer] * vectors.shape[0], KIND) for j, layer in enumerate(self.layers)]

    def soft_interventions(self, acts: Float[Tensor, "n layer d"]) -> list[Intervention]:
        return self.interventions(self.soft_vectors(acts))

    def route(self, model: "Model", prompts: Sequence[str], batch_size: int = 16) -> Int[Tensor, "n layer"]:
        """The vector picked for each prompt at each layer (all zeros for k = 1)."""
        if self.k == 1:
            return torch.zeros(len(prompts), len(self.layers), dtype=torch.long)
        return self.choose(self.activations(model, prompts, batch_size))

    def generate(self, model: "Model", prompts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 16,
                 progress: bool | None = None) -> list[str]:
        """Greedy answers with each prompt's picked vectors added at every prompt and generated token."""
        from interp.core.model import check_prompts

        check_prompts(prompts)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InterpError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.check_for(model)
        if self.k == 1:
            return list(model.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                       interventions=self.interventions(), progress=progress))
        from tqdm.auto import tqdm

        out: list[str] = []
        chunks = [list(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)]
        show = progress if progress is not None else len(chunks) > 1
        for chunk in tqdm(chunks, desc="routed generate", unit="batch", disable=not show):
            ivs = self.interventions(self.vectors(self.route(model, chunk, batch_size)))
            out += model.generate(chunk, max_new_tokens=max_new_tokens, batch_size=len(chunk), interventions=ivs,
                                  progress=False)
        return out

    # ----- persistence: safetensors + JSON -----
    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        write_tensors(directory / TENSORS, {f: getattr(self, f).detach().float() for f in _FIELDS})
        write_json(directory / META, {"format": FORMAT, "layers": list(self.layers), "k": self.k, "kind": KIND,
                                      "alpha": self.alpha, "model": self.provenance.get("model"),
                                      "provenance": self.provenance})
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, model: "Model | None" = None) -> "ConceptRouter":
        """Load a saved router; with `model`, refuse one fitted on another model or shape."""
        directory = Path(directory)
        meta, tensors = read_artifact(directory, META, TENSORS, FORMAT, "concept router", _FIELDS)
        layers = meta.get("layers")
        if not isinstance(layers, list) or tensors["centroids"].shape[:2] != (len(layers), meta.get("k")):
            raise InterpError(f"{directory / TENSORS} holds centroids {tuple(tensors['centroids'].shape)} but {META} "
                              f"says layers {layers} and k={meta.get('k')}; the two files do not belong together")
        out = cls(tuple(layers), centroids=tensors["centroids"], weight=tensors["weight"], bias=tensors["bias"],
                  center=tensors["center"], scale=tensors["scale"], alpha=float(meta["alpha"]),
                  provenance=meta.get("provenance") or {})
        if model is not None:
            out.check_for(model)
        return out


def is_saved(directory: str | os.PathLike) -> bool:
    return (Path(directory) / META).is_file()
