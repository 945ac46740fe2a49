"""The TransformerLens 4 backend (`TransformerBridge`): every site is TransformerLens's own hook point.

The bridge is built lazily, on first use, over the very HF model object the `Model` holds (no second copy of
the weights). TransformerLens then owns that object: it switches it to eager attention and wraps its submodules
in bridge components, in place (`Model.layers` follows). The weights are left exactly as they are (no LayerNorm
folding, no centring: compatibility mode's weight processing is never enabled), so the values match the HF
forward. Our site names are TransformerLens hook names already; `site_module` resolves each to the bridge's
`HookPoint` of that name, so the one runner (`interp.core.runner.forward`) reads and writes there: capture,
every intervention, logits and generation alike. A native site (a module path) has no hook point and is refused,
as is a kind the bridge does not expose for the architecture.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor, nn

from interp.core.backends.hooks import HooksBackend
from interp.core.sites import KINDS, Site
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.model import Model, TokenBatch
    from interp.core.prefix import PrefixKV


class TransformerLensBackend(HooksBackend):
    """The hooks backend's forward, with every site resolved to a TransformerLens hook point."""

    name = "transformer_lens"

    def __init__(self, model: "Model"):
        super().__init__(model)
        self._bridge = None
        self._kinds: list[str] | None = None
        self._hooks: dict[str, nn.Module] | None = None

    @property
    def bridge(self):
        """The `TransformerBridge` over `model.hf`, built on first use."""
        if self._bridge is None:
            from transformer_lens.model_bridge import TransformerBridge

            m = self.model
            # A copy of the tokenizer: the bridge normalises the one it is given (padding side, BOS), and the
            # Model's own tokenizer must stay as it is. The bridge reloads it from m.source when it needs BOS.
            tokenizer = copy.deepcopy(m.tokenizer)
            if tokenizer.pad_token_id is None:  # on the copy only, as the Model pads with its EOS (`Model.pad_id`)
                tokenizer.pad_token = tokenizer.eos_token
            self._bridge = TransformerBridge.boot_transformers(
                m.source, hf_model=m.hf, tokenizer=tokenizer, device=m.device, dtype=m.dtype
            )
            m.layers = m.hf.get_submodule(m.family.layers)  # the bridge replaced the layer list with its blocks
        return self._bridge

    def supported_kinds(self) -> list[str]:
        """The site kinds the bridge exposes as hook points for this architecture."""
        if self._kinds is None:
            self._kinds = [k for k in KINDS if f"blocks.0.{k}" in self.hook_points]
        return self._kinds

    @property
    def hook_points(self) -> dict[str, nn.Module]:
        """The bridge's hook points by name (read once: the bridge builds the dict on each access)."""
        if self._hooks is None:
            self._hooks = dict(self.bridge.hook_dict)
        return self._hooks

    def site_module(self, site: Site) -> tuple[nn.Module, str]:
        """The bridge's hook point for `site` and "hook" (its output is the site's value, TransformerLens layout)."""
        if site.native:
            raise InterpError(f"the transformer_lens backend reads TransformerLens hook points, not module paths "
                              f"({site.name}); use backend='hooks' or 'nnsight' for native sites")
        hook = self.hook_points.get(site.name) if site.kind in self.supported_kinds() else None
        if hook is None:
            raise InterpError(
                f"the transformer_lens backend cannot hook {site.kind} on {self.model.name}; it supports "
                f"{', '.join(self.supported_kinds())} (use backend='hooks' for the others)")
        return hook, "hook"

    @torch.no_grad()
    def capture_batch(self, batch: "TokenBatch", sites: list[Site], reduce: Callable[[Site, Tensor], Tensor],
                      stop_layer: int | None, prefix: "PrefixKV | None" = None) -> dict[Site, Tensor]:
        for site in sites:  # every site refused in one line before the forward
            self.site_module(site)
        return super().capture_batch(batch, sites, reduce, stop_layer, prefix)
