"""Static neuron steering: scale chosen MLP neurons (`NeuronScale`), and find them by attribution.

G-ACT's paper (Sharma and Raman 2025, arXiv 2506.18887; no public code) first tries a static method: the MLP
neuron most tied to the target language's token ("C++" / "CPP") is found by attribution and its weight is
perturbed, the same neuron for every prompt. The paper finds it brittle across prompt styles and model scales,
which motivates G-ACT's per-prompt routing. `analyses.concepts` runs it as the baseline "neurons"; this module holds
its reusable pieces.

- `NeuronScale(neurons, factors)`: multiply chosen neurons' activations at `blocks.{layer}.mlp.hook_post` (the
  MLP's hidden activation, the input of its down projection) by a factor, on every batch row and at every
  position, prompt and generated tokens alike. The MLP's output is the down projection of that activation, linear
  in each neuron, so scaling neuron j's activation by s is scaling column j of the down projection by s: the paper's
  weight perturbation, done by a hook (the model's weights are never touched). Nothing upstream of the down
  projection changes; the other neurons of the layer keep their values. Differentiable in `factors`.
- `attribution(model, metric)`: the gradient of a scalar metric with respect to every neuron's factor, at 1.
  By the chain rule that is sum over positions of activation x gradient (gradient x activation, attribution
  patching's first-order estimate): how much scaling that neuron's weight up moves the metric.
- `top_neurons(scores, k)`: the k highest-scoring (layer, neuron) pairs over all layers, best first.

The prefix KV cache (`interp.core.prefix`) treats `NeuronScale` as acting alike at every token and row: a shared
prefix runs under it, so cached and uncached runs agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from interp.core.hooks import HookFn
from interp.core.interventions import site_width
from interp.core.prefix import SAME_EVERYWHERE, register_rule
from interp.core.sites import Site
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.interventions import Intervention
    from interp.core.model import Model

KIND = "mlp.hook_post"


@dataclass(frozen=True, eq=False)
class NeuronScale:
    """Multiply the activation of each (layer, neuron) in `neurons` at `blocks.{layer}.mlp.hook_post` by its factor,
    at every row and position (prompt and generated tokens). `factors`: one number for all neurons, or a tensor [k]
    (one per neuron, in the order of `neurons`; a tensor that requires grad stays in the graph). Raises InterpError
    for an empty or repeated neuron list, a factor count that does not match, or non-finite factors; `hooks` raises
    for a layer or neuron index the model does not have."""

    neurons: Sequence[tuple[int, int]] | Tensor  # (layer, neuron) pairs, or a long tensor [k, 2]
    factors: float | Tensor = 1.0
    _pairs: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = self.neurons
        pairs = (n.long() if isinstance(n, Tensor) else torch.as_tensor([tuple(p) for p in n], dtype=torch.long)) \
            if len(n) else None
        if pairs is None or pairs.ndim != 2 or pairs.shape[1] != 2:
            raise InterpError("NeuronScale needs one or more (layer, neuron) pairs")
        if (pairs < 0).any():
            raise InterpError("NeuronScale layers and neuron indices must be non-negative")
        key = pairs[:, 0] * (int(pairs[:, 1].max()) + 1) + pairs[:, 1]
        if key.unique().numel() != len(key):
            raise InterpError("NeuronScale neurons must be distinct (layer, neuron) pairs")
        f = self.factors
        if isinstance(f, Tensor):
            if f.shape != (len(pairs),):
                raise InterpError(f"NeuronScale needs one factor or a tensor of {len(pairs)} factors, got shape "
                                  f"{tuple(f.shape)}")
            finite = bool(torch.isfinite(f.detach()).all())
        elif isinstance(f, (int, float)) and not isinstance(f, bool):
            finite = bool(torch.isfinite(torch.tensor(float(f))))
        else:
            raise InterpError(f"NeuronScale factors must be a number or a tensor, got {type(f).__name__}")
        if not finite:
            raise InterpError("NeuronScale factors must be finite")
        object.__setattr__(self, "_pairs", pairs)

    @property
    def k(self) -> int:
        return len(self._pairs)

    def factor_tensor(self) -> Tensor:
        """The factors as a tensor [k] (a number repeated for every neuron)."""
        if isinstance(self.factors, Tensor):
            return self.factors
        return torch.full((self.k,), float(self.factors))

    def hooks(self, model: "Model") -> dict[Site, list[HookFn]]:
        pairs = self._pairs
        factors = self.factor_tensor()
        out: dict[Site, list[HookFn]] = {}
        for layer in sorted(set(pairs[:, 0].tolist())):
            (site,) = model.sites(f"blocks.{model.check_layer(layer, 'a NeuronScale layer')}.{KIND}")
            rows = (pairs[:, 0] == layer).nonzero()[:, 0]
            index = pairs[rows, 1]
            width = site_width(model, site)
            if int(index.max()) >= width:
                raise InterpError(f"NeuronScale neuron {int(index.max())} is out of range: {site} has {width} neurons")

            def fn(s: Site, x: Tensor, index=index, rows=rows) -> Tensor:
                f = factors[rows].to(device=x.device, dtype=x.dtype)
                gain = torch.ones(x.shape[-1], device=x.device, dtype=x.dtype).index_put((index.to(x.device),), f)
                return x * gain

            out[site] = [fn]
        return out


register_rule(NeuronScale, SAME_EVERYWHERE)  # the same factor at every token and every row


def mlp_width(model: "Model", layers: Sequence[int]) -> int:
    """The number of MLP neurons at `mlp.hook_post` of `layers` (one width for all; raises InterpError otherwise,
    or for a family without that site)."""
    widths = {site_width(model, s) for layer in layers for s in model.sites(f"blocks.{layer}.{KIND}")}
    if len(widths) != 1:
        raise InterpError(f"the MLPs of layers {list(layers)} differ in width ({sorted(widths)}); attribute them "
                          "layer by layer")
    return widths.pop()


def attribution(model: "Model", metric: Callable[[Sequence["Intervention"]], Tensor],
                layers: Sequence[int] | None = None) -> Float[Tensor, "layer neuron"]:
    """d metric / d s at s = 1 for every neuron of `layers` (default: all), where s scales the neuron's activation at
    `mlp.hook_post` (`NeuronScale`) at every position: sum over positions of activation x gradient. `metric(edits)`
    runs the forwards it needs with `edits` applied and returns a scalar (summed over its rows; the model's weights
    take no gradient). Returns float32 [len(layers), neurons] on the CPU."""
    layers = list(range(model.n_layers)) if layers is None else [model.check_layer(i) for i in layers]
    width = mlp_width(model, layers)
    grid = torch.stack(torch.meshgrid(torch.tensor(layers), torch.arange(width), indexing="ij"), -1).reshape(-1, 2)
    factors = torch.ones(len(grid), requires_grad=True)
    with torch.enable_grad():
        value = metric([NeuronScale(grid, factors)])
        if not isinstance(value, Tensor) or value.numel() != 1 or not value.requires_grad:
            raise InterpError("the attribution metric must return one number computed under the edits it is given")
        (grad,) = torch.autograd.grad(value.reshape(()), factors)
    return grad.detach().float().cpu().reshape(len(layers), width)


def top_neurons(scores: Float[Tensor, "layer neuron"], k: int, layers: Sequence[int] | None = None
                ) -> tuple[list[tuple[int, int]], list[float]]:
    """The k highest scores over all layers, best first: their (layer, neuron) pairs (`layers[i]` for row i of
    `scores`, default i) and the scores. Ties: the earlier layer, then the lower neuron index."""
    if scores.ndim != 2 or not 1 <= k <= scores.numel():
        raise InterpError(f"top_neurons needs scores [layer, neuron] and 1 <= k <= {scores.numel()}, got "
                          f"{tuple(scores.shape)} and k={k}")
    layers = list(range(scores.shape[0])) if layers is None else list(layers)
    flat = scores.reshape(-1).float()
    order = torch.sort(-flat, stable=True).indices[:k].tolist()
    width = scores.shape[1]
    return [(layers[i // width], i % width) for i in order], [float(flat[i]) for i in order]
