"""Attribution patching (Nanda 2023; Syed et al. 2023): first-order estimates of intervention effects.

One forward and one backward pass give, for a scalar metric m, the gradient at every residual-stream write.
Then, for any candidate direction r, the effect of

- directional ablation of r (removing r from every write w: the embedding, each attention and MLP output) is
  Δm ≈ -Σ_w Σ_pos (∂m/∂w · r)(w · r) = -rᵀ M r, with M = Σ_w Σ_pos (∂m/∂w) wᵀ, a d x d matrix;
- adding a vector v to `hook_resid_pre` of layer l at every position is Δm ≈ Σ_pos ∂m/∂resid_pre_l · v.

Scoring hundreds of candidates then costs a matrix product instead of hundreds of forward passes; the
estimates rank candidates for an exact, batched evaluation of a shortlist (see `analyses.refusal`).

KL needs more. At the clean point KL(clean || edited) is at a minimum, so its first-order term is zero and a
gradient says nothing about it. Its second-order term is ½ δᵀ F δ, with δ the edit and F a Fisher matrix; the
size of the edit is the part we can get for free: ablating r removes (w · r) r from every write w, so the
edit's energy per token is rᵀ E r with E = Σ_w Σ_pos w wᵀ / tokens (`write_energy`, from the same pass,
pad positions left out). It ranks candidates by how much ablation changes the residual stream, not by
how much the output cares; the exact scoring of the shortlist measures the real KL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from interp.core.runner import forward
from interp.core.sites import Site
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.hooks import HookFn
    from interp.core.model import Model

Metric = Callable[[Tensor], Tensor]  # last-token logits [batch, vocab] -> a scalar per row [batch]


@dataclass
class ResidualGradients:
    """`ablation_matrix` M [d, d] (summed over prompts) and `resid_pre_grad` [layer, d] (summed over
    prompts and positions) of a metric summed over `n` prompts; `write_energy` E [d, d], the second moment
    of the residual writes per real token (see the module docstring)."""

    ablation_matrix: Float[Tensor, "d d"]
    resid_pre_grad: Float[Tensor, "layer d"]
    n: int
    write_energy: Float[Tensor, "d d"] | None = None

    def ablation_energy(self, directions: Float[Tensor, "... d"]) -> Float[Tensor, "..."]:
        """Squared size, per token, of what ablating each unit direction removes from the residual writes:
        Σ_w (w · r̂)², a cheap stand-in for the KL that ablation costs (whose first-order term is 0)."""
        if self.write_energy is None:
            raise InterpError("these gradients carry no write_energy; compute them with residual_gradients")
        r = directions / directions.norm(dim=-1, keepdim=True)
        return torch.einsum("...d,de,...e->...", r, self.write_energy, r)

    def ablation_effect(self, directions: Float[Tensor, "... d"]) -> Float[Tensor, "..."]:
        """Estimated change of the mean metric when each unit direction is ablated everywhere."""
        r = directions / directions.norm(dim=-1, keepdim=True)
        return -torch.einsum("...d,de,...e->...", r, self.ablation_matrix, r) / self.n

    def addition_effect(self, vectors: Float[Tensor, "... d"], layers: Tensor) -> Float[Tensor, "..."]:
        """Estimated change of the mean metric when vectors[i] is added at `hook_resid_pre` of layers[i]."""
        return (self.resid_pre_grad[layers] * vectors).sum(-1) / self.n


def residual_gradients(model: "Model", ids: Sequence[Sequence[int]], metric: Metric, batch_size: int = 16) -> ResidualGradients:
    """Gradients of `metric` (summed over prompts) at every residual-stream write and layer input."""
    d, L = model.d_model, model.n_layers
    M = torch.zeros(d, d, dtype=torch.float64)
    E = torch.zeros(d, d, dtype=torch.float64)
    G = torch.zeros(L, d, dtype=torch.float64)
    tokens = 0
    for start in range(0, len(ids), batch_size):
        batch = model.pad(ids[start:start + batch_size])
        writes: list[tuple[Tensor, list[Tensor]]] = []  # (value, [grad]) per write
        pre_grads: dict[int, list[Tensor]] = {}

        def leaf(site: Site, x: Tensor) -> Tensor:  # layer 0's input becomes a leaf that requires grad
            return x.detach().requires_grad_(True)

        def record_write(site: Site, x: Tensor) -> None:
            slot: list[Tensor] = []
            writes.append((x.detach(), slot))
            x.register_hook(lambda g, slot=slot: slot.append(g.detach()))

        def record_pre(site: Site, x: Tensor) -> None:
            slot = pre_grads.setdefault(site.layer, [])
            x.register_hook(lambda g, slot=slot: slot.append(g.detach()))
            if site.layer == 0:  # the embedding is a write too
                record_write(site, x)

        fns: dict[Site, list[HookFn]] = {Site(0, "hook_resid_pre"): [leaf, record_pre]}
        for i in range(L):
            fns.setdefault(Site(i, "hook_resid_pre"), []).append(record_pre) if i else None
            fns[Site(i, "hook_attn_out")] = [record_write]
            fns[Site(i, "hook_mlp_out")] = [record_write]
        with torch.enable_grad():
            out = forward(model, batch, hooks=fns).logits
            assert out is not None  # logits were asked for and the forward ran to the end
            logits = out.float()
            metric(logits).sum().backward()
        mask = batch.attention_mask.double().cpu()[..., None]
        tokens += int(batch.attention_mask.sum())
        for value, slot in writes:
            v = value.double().cpu()
            M += torch.einsum("bpd,bpe->de", slot[0].double().cpu(), v)
            E += torch.einsum("bpd,bpe->de", v * mask, v)
        for layer, slot in pre_grads.items():
            G[layer] += slot[0].double().sum((0, 1)).cpu()
    return ResidualGradients(M.float(), G.float(), len(ids), (E / max(tokens, 1)).float())
