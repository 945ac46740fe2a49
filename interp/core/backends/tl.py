"""Capture through TransformerLens 4 (`TransformerBridge`), for users who think in its hook points.

The bridge is built lazily, on the first capture, over the very HF model object the `Model` holds (no second
copy of the weights). TransformerLens then owns that object: it switches it to eager attention and wraps its
submodules in bridge components, in place. The weights are left exactly as they are (no LayerNorm folding,
no centring: compatibility mode's weight processing is never enabled), so the values match the HF forward.
Our site names are TransformerLens hook names already, so each site is read at the bridge hook of the same
name, with the left-padded batch, its attention mask and its position ids. The forward stops once the deepest
requested layer's `hook_resid_post` has fired, by raising TransformerLens's own `StopAtLayerException` there
(what `stop_at_layer=L+1` does, except that this also works after the last block, skipping the final norm
and the unembedding).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from interp.core.sites import KINDS, Site
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.model import Model, TokenBatch


class TransformerLensBackend:
    name = "transformer_lens"

    def __init__(self, model: "Model"):
        self.model = model
        self._bridge = None

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
        return self._bridge

    def supported_kinds(self) -> list[str]:
        """The site kinds the bridge exposes as hook points for this architecture."""
        hooks = self.bridge.hook_dict
        return [k for k in KINDS if f"blocks.0.{k}" in hooks]

    @torch.no_grad()
    def capture_batch(self, batch: "TokenBatch", sites: list[Site], reduce: Callable[[Site, Tensor], Tensor],
                      stop_layer: int) -> dict[Site, Tensor]:
        from transformer_lens.model_bridge.exceptions import StopAtLayerException

        bridge = self.bridge
        supported = self.supported_kinds()
        if missing := sorted({s.kind for s in sites} - set(supported)):
            raise InterpError(
                f"the transformer_lens backend cannot capture {', '.join(missing)} on {self.model.name}; "
                f"it supports {', '.join(supported)} (use backend='hooks' for the others)"
            )
        got: dict[Site, Tensor] = {}

        def keeper(site: Site):
            def hook(x: Tensor, hook) -> None:
                got[site] = reduce(site, x)

            return hook

        def stop(x: Tensor, hook) -> None:
            raise StopAtLayerException(x)

        # Registered last, so it runs after any capture hook on the same hook point.
        hooks = [(s.name, keeper(s)) for s in sites] + [(f"blocks.{stop_layer}.hook_resid_post", stop)]
        bridge.run_with_hooks(
            batch.input_ids,
            fwd_hooks=hooks,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            return_type=None,
            use_cache=False,
        )
        if missing_sites := [s for s in sites if s not in got]:
            raise InterpError(f"TransformerLens hooks at {', '.join(map(str, missing_sites))} never fired")
        return got
