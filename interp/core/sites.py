"""Canonical hook sites in TransformerLens vocabulary, resolved to HF modules from one table.

A site is `blocks.{i}.<kind>` with kind one of `KINDS`. Each architecture family maps the kinds to a module
path inside a decoder layer and to how the value is read there ("in": the module's first input, "out": its
output). This table is the only per-family code in the project.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from interp.errors import InterpError

KINDS = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "attn.hook_z",
    "attn.hook_pattern",
    "mlp.hook_post",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
)
HEAD_KINDS = ("attn.hook_z", "attn.hook_q", "attn.hook_k", "attn.hook_v")  # seen per head: [batch, pos, head, d_head]

# Where each kind lives inside one decoder layer: (module path relative to the layer, "in" or "out").
# "" is the decoder layer itself. hook_pattern reads output[1] of the attention module (eager attention).
_LLAMA = {
    "hook_resid_pre": ("", "in"),
    "hook_resid_mid": ("post_attention_layernorm", "in"),
    "hook_resid_post": ("", "out"),
    "hook_attn_out": ("self_attn", "out"),
    "hook_mlp_out": ("mlp", "out"),
    "attn.hook_z": ("self_attn.o_proj", "in"),
    "attn.hook_pattern": ("self_attn", "out"),
    "mlp.hook_post": ("mlp.down_proj", "in"),
    # queries, keys and values before the rotary embedding (TransformerLens' hook_q/k/v); with grouped-query
    # attention, hook_k and hook_v have the model's n_key_value_heads heads, shared by groups of query heads
    "attn.hook_q": ("self_attn.q_proj", "out"),
    "attn.hook_k": ("self_attn.k_proj", "out"),
    "attn.hook_v": ("self_attn.v_proj", "out"),
}
_GEMMA = {
    **_LLAMA,
    "hook_resid_mid": ("pre_feedforward_layernorm", "in"),
    "hook_attn_out": ("post_attention_layernorm", "out"),
    "hook_mlp_out": ("post_feedforward_layernorm", "out"),
}
_GPT2 = {
    "hook_resid_pre": ("", "in"),
    "hook_resid_mid": ("ln_2", "in"),
    "hook_resid_post": ("", "out"),
    "hook_attn_out": ("attn", "out"),
    "hook_mlp_out": ("mlp", "out"),
    "attn.hook_z": ("attn.c_proj", "in"),
    "attn.hook_pattern": ("attn", "out"),
    "mlp.hook_post": ("mlp.c_proj", "in"),
    # no attn.hook_q/k/v: GPT-2 computes them in one fused c_attn projection
}


@dataclass(frozen=True)
class Family:
    layers: str  # path of the ModuleList of decoder layers
    embed: str
    final_norm: str
    sites: dict[str, tuple[str, str]]
    o_proj: str  # attention output projection, relative to a layer (for weight orthogonalisation)
    down_proj: str  # MLP output projection, relative to a layer
    conv1d: bool = False  # GPT-2 stores linear weights transposed (Conv1D)
    qkv_proj: tuple[str, str, str] | None = None  # query, key, value projections relative to a layer (interp.circuits.heads)
    attn_norm: str | None = None  # the norm in front of attention, relative to a layer (folded into W_Q/W_K/W_V)


_LLAMA_FAMILY = Family("model.layers", "model.embed_tokens", "model.norm", _LLAMA, "self_attn.o_proj", "mlp.down_proj",
                       qkv_proj=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), attn_norm="input_layernorm")
FAMILIES: dict[str, Family] = {
    "llama": _LLAMA_FAMILY,
    "qwen2": _LLAMA_FAMILY,
    "mistral": _LLAMA_FAMILY,
    "gemma2": Family("model.layers", "model.embed_tokens", "model.norm", _GEMMA, "self_attn.o_proj", "mlp.down_proj"),
    "gemma3_text": Family("model.layers", "model.embed_tokens", "model.norm", _GEMMA, "self_attn.o_proj", "mlp.down_proj"),
    "gpt2": Family("transformer.h", "transformer.wte", "transformer.ln_f", _GPT2, "attn.c_proj", "mlp.c_proj", conv1d=True),
}

_SITE_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True, order=True)
class Site:
    layer: int
    kind: str

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.{self.kind}"

    def __str__(self) -> str:
        return self.name


def family_for(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise InterpError(f"architecture {model_type!r} has no site table; supported: {', '.join(FAMILIES)}")
    return FAMILIES[model_type]


def _normalise_kind(kind: str) -> str:
    if kind in KINDS:
        return kind
    for k in KINDS:  # accept "resid_post" for "hook_resid_post" and "hook_z" for "attn.hook_z"
        if k.endswith(kind) and (k.endswith("." + kind) or k == "hook_" + kind or k.endswith(".hook_" + kind)):
            return k
    raise InterpError(f"unknown site kind {kind!r}; valid kinds: {', '.join(KINDS)} (as blocks.{{i}}.<kind>)")


def parse_sites(spec: str | Site | list[str | Site] | tuple, n_layers: int) -> list[Site]:
    """Parse site names. `blocks.3.hook_resid_post` is one site; a bare kind (`hook_resid_post`,
    `resid_post`) or `blocks.*.kind` means that kind at every layer."""
    items = [spec] if isinstance(spec, (str, Site)) else list(spec)
    if not items:
        raise InterpError(f"no sites given; name at least one, e.g. 'blocks.0.hook_resid_post' (valid kinds: {', '.join(KINDS)})")
    out: list[Site] = []
    for item in items:
        if isinstance(item, Site):
            sites = [item]
        elif not isinstance(item, str):
            raise InterpError(f"a site must be a string like 'blocks.0.hook_resid_post', got {type(item).__name__}")
        elif (m := _SITE_RE.match(item)) is not None:
            sites = [Site(int(m.group(1)), _normalise_kind(m.group(2)))]
        elif item.startswith("blocks.*."):
            kind = _normalise_kind(item[len("blocks.*."):])
            sites = [Site(i, kind) for i in range(n_layers)]
        else:
            try:
                kind = _normalise_kind(item)
            except InterpError:
                raise InterpError(
                    f"unknown site {item!r}; write blocks.{{i}}.<kind> with i in 0..{n_layers - 1} and kind one of "
                    f"{', '.join(KINDS)}, or a bare kind for every layer"
                ) from None
            sites = [Site(i, kind) for i in range(n_layers)]
        for s in sites:
            if not 0 <= s.layer < n_layers:
                raise InterpError(f"layer {s.layer} of site {s.name} is out of range: this model has layers 0..{n_layers - 1}")
            if s not in out:
                out.append(s)
    return out


def check_layer(layer: int, n_layers: int, what: str = "layer") -> int:
    """Validate a layer index (negative counts from the end) and return it as non-negative."""
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise InterpError(f"{what} must be an integer, got {layer!r}")
    idx = layer + n_layers if layer < 0 else layer
    if not 0 <= idx < n_layers:
        raise InterpError(f"{what} {layer} is out of range: this model has layers 0..{n_layers - 1}")
    return idx


def check_head(layer: int, head: int, n_layers: int, n_heads: int, what: str = "head") -> tuple[int, int]:
    """Validate a (layer, head) pair (a negative layer counts from the end) and return it non-negative."""
    layer = check_layer(layer, n_layers, "layer" if what == "head" else f"{what} layer")
    if not isinstance(head, int) or isinstance(head, bool) or not 0 <= head < n_heads:
        raise InterpError(f"{what} {head!r} is out of range (layer {layer}): this model has heads 0..{n_heads - 1}")
    return layer, head
