"""The default backend: plain torch hooks on the HF model (no wrapper, least overhead)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from interp.core.runner import forward
from interp.core.sites import Site

if TYPE_CHECKING:
    from interp.core.model import Model, TokenBatch
    from interp.core.prefix import PrefixKV


class HooksBackend:
    name = "hooks"
    supports_prefix = True

    def __init__(self, model: "Model"):
        self.model = model

    @torch.no_grad()
    def capture_batch(self, batch: "TokenBatch", sites: list[Site], reduce: Callable[[Site, Tensor], Tensor],
                      stop_layer: int, prefix: "PrefixKV | None" = None) -> dict[Site, Tensor]:
        got: dict[Site, Tensor] = {}

        def keep(site: Site, x: Tensor) -> None:
            got[site] = reduce(site, x)

        need_eager = any(s.kind == "attn.hook_pattern" for s in sites)
        forward(self.model, batch, hooks={s: [keep] for s in sites}, prefix=prefix, stop_after=stop_layer, logits=None,
            eager=need_eager)
        return got
