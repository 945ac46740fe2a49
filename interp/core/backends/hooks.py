"""The default backend: plain torch hooks on the HF model (no wrapper, least overhead)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from interp.core.runner import forward
from interp.core.sites import Site
from interp.errors import InterpError

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
                      stop_layer: int | None, prefix: "PrefixKV | None" = None) -> dict[Site, Tensor]:
        got: dict[Site, Tensor] = {}

        def keep(site: Site, x: Tensor) -> None:
            got[site] = reduce(site, x)

        need_eager = any(s.kind == "attn.hook_pattern" for s in sites)
        forward(self.model, batch, hooks={s: [keep] for s in sites}, prefix=prefix, stop_after=stop_layer, logits=None,
            eager=need_eager)
        if missing := [s for s in sites if s not in got]:  # every requested site lies in a layer that ran
            raise InterpError(f"the {self.name} backend's hooks at {', '.join(map(str, missing))} never fired on "
                              f"{self.model.name}" + ("; use backend='hooks' for them" if self.name != "hooks" else ""))
        return got
