"""Canonical hook sites in TransformerLens vocabulary, resolved to HF modules from one table.

A site is `blocks.{i}.<kind>` with kind one of `KINDS`. Each architecture family maps the kinds to a module
path inside a decoder layer and to how the value is read there ("in": the module's first input, "out": its
output). This table is the only per-family code in the project.

The escape hatch for anything the table lacks is a native site, nnsight style: a module path of the HF model
followed by `.input` (the module's first input) or `.output` (its output, element 0 of a tuple), e.g.
`model.layers.3.mlp.act_fn.output`. It is captured and intervened on like any site, read as the module gives it
(no head split, no family scaling); its `layer` is the decoder layer it lies in, or -1 outside them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn

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
NATIVE_KINDS = ("input", "output")  # the kind of a native site (a module path, see the module docstring)

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
# OLMo 2 normalises the attention and MLP outputs before adding them (no norm in front of them): the residual
# stream after attention is the MLP's input.
_OLMO2 = {
    **_LLAMA,
    "hook_resid_mid": ("mlp", "in"),
    "hook_attn_out": ("post_attention_layernorm", "out"),
    "hook_mlp_out": ("post_feedforward_layernorm", "out"),
}
_STARCODER2 = {**_LLAMA, "mlp.hook_post": ("mlp.c_proj", "in")}
# Phi-3 fuses q/k/v (qkv_proj) and gate/up (gate_up_proj); down_proj still reads the MLP's hidden activation.
_PHI3 = {k: v for k, v in _LLAMA.items() if k not in ("attn.hook_q", "attn.hook_k", "attn.hook_v")}
# Parallel blocks (attention and MLP both read the block input): no hook_resid_mid (see Family.parallel).
_PARALLEL_LLAMA = {k: v for k, v in _LLAMA.items() if k != "hook_resid_mid"}  # Cohere
_PHI = {
    **_PARALLEL_LLAMA,
    "attn.hook_z": ("self_attn.dense", "in"),
    "mlp.hook_post": ("mlp.fc2", "in"),
}
_GPTJ = {
    "hook_resid_pre": ("", "in"),
    "hook_resid_post": ("", "out"),
    "hook_attn_out": ("attn", "out"),
    "hook_mlp_out": ("mlp", "out"),
    "attn.hook_z": ("attn.out_proj", "in"),
    "attn.hook_pattern": ("attn", "out"),
    "mlp.hook_post": ("mlp.fc_out", "in"),
    "attn.hook_q": ("attn.q_proj", "out"),
    "attn.hook_k": ("attn.k_proj", "out"),
    "attn.hook_v": ("attn.v_proj", "out"),
}
# GPT-NeoX: parallel unless use_parallel_residual=False, where post_attention_layernorm reads resid_mid.
_GPT_NEOX = {
    "hook_resid_pre": ("", "in"),
    "hook_resid_mid": ("post_attention_layernorm", "in"),
    "hook_resid_post": ("", "out"),
    "hook_attn_out": ("attention", "out"),
    "hook_mlp_out": ("mlp", "out"),
    "attn.hook_z": ("attention.dense", "in"),
    "attn.hook_pattern": ("attention", "out"),
    "mlp.hook_post": ("mlp.dense_4h_to_h", "in"),
    # no attn.hook_q/k/v: GPT-NeoX computes them in one fused query_key_value projection
}
_FALCON = {
    "hook_resid_pre": ("", "in"),
    "hook_resid_mid": ("post_attention_layernorm", "in"),
    "hook_resid_post": ("", "out"),
    "hook_attn_out": ("self_attention", "out"),
    "hook_mlp_out": ("mlp", "out"),
    "attn.hook_z": ("self_attention.dense", "in"),
    "attn.hook_pattern": ("self_attention", "out"),
    "mlp.hook_post": ("mlp.dense_4h_to_h", "in"),
    # no attn.hook_q/k/v: Falcon computes them in one fused query_key_value projection
}
_PARALLEL = "this family computes attention and the MLP in parallel from the block input, so there is no resid_mid"
_MOE = {"mlp.hook_post": "the MLP is a mixture of experts with no single down projection; read hook_mlp_out instead"}


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
    # Attention and MLP read the same block input (so there is no hook_resid_mid): True, or the names of the config
    # flags any of which says so for a model of the family (False: sequential).
    parallel: bool | str | tuple[str, ...] = False
    unavailable: dict[str, str] = field(default_factory=dict)  # kind -> why the family has no such site
    # kind -> the config attribute that multiplies the value read at the module before the layer adds it to the
    # residual stream (Granite's residual_multiplier): the site's value is the product; writes are divided back.
    scales: dict[str, str] = field(default_factory=dict)
    # kinds whose module output the layer then adds into in place (Falcon's `mlp_output += attention_output`): the
    # hook hands the layer a copy, so what hooks read stays the site's value
    copy_out: frozenset[str] = frozenset()

    @property
    def parallel_flags(self) -> tuple[str, ...]:
        """The config flags that make a block of this family parallel (none when `parallel` is a bool)."""
        return (self.parallel,) if isinstance(self.parallel, str) else self.parallel if isinstance(self.parallel, tuple) else ()

    def missing(self, kind: str, config: Any) -> str | None:
        """Why `kind` has no value in a model of this family with `config`, or None when it has one."""
        if kind == "hook_resid_mid" and (self.parallel is True or any(getattr(config, f, False) for f in self.parallel_flags)):
            return _PARALLEL
        return self.unavailable.get(kind)

    def scale(self, kind: str, config: Any) -> float:
        """The factor between the value read at `kind`'s module and the site's value (1.0 for most sites)."""
        return float(getattr(config, self.scales[kind])) if kind in self.scales else 1.0


_LLAMA_FAMILY = Family("model.layers", "model.embed_tokens", "model.norm", _LLAMA, "self_attn.o_proj", "mlp.down_proj",
                       qkv_proj=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), attn_norm="input_layernorm")
_PLAIN = Family("model.layers", "model.embed_tokens", "model.norm", _LLAMA, "self_attn.o_proj", "mlp.down_proj")
_MOE_FAMILY = Family("model.layers", "model.embed_tokens", "model.norm", _LLAMA, "self_attn.o_proj", "mlp.experts",
                     qkv_proj=_LLAMA_FAMILY.qkv_proj, attn_norm="input_layernorm", unavailable=_MOE)
FAMILIES: dict[str, Family] = {
    "llama": _LLAMA_FAMILY,
    "qwen2": _LLAMA_FAMILY,
    "mistral": _LLAMA_FAMILY,
    "gemma2": Family("model.layers", "model.embed_tokens", "model.norm", _GEMMA, "self_attn.o_proj", "mlp.down_proj"),
    "gemma3_text": Family("model.layers", "model.embed_tokens", "model.norm", _GEMMA, "self_attn.o_proj", "mlp.down_proj"),
    "gpt2": Family("transformer.h", "transformer.wte", "transformer.ln_f", _GPT2, "attn.c_proj", "mlp.c_proj", conv1d=True),
    # Families below leave qkv_proj unset (heads as matrices refuse them) where a q/k norm follows the projections
    # (qwen3, olmo2) or the attention norm is not a plain RMSNorm gain (gemma's 1 + w, LayerNorm biases).
    "qwen3": _PLAIN,
    "gemma": _PLAIN,
    "olmo": _PLAIN,
    "olmo2": Family("model.layers", "model.embed_tokens", "model.norm", _OLMO2, "self_attn.o_proj", "mlp.down_proj"),
    "stablelm": Family("model.layers", "model.embed_tokens", "model.norm", _LLAMA, "self_attn.o_proj", "mlp.down_proj",
                       parallel="use_parallel_residual"),
    "starcoder2": Family("model.layers", "model.embed_tokens", "model.norm", _STARCODER2, "self_attn.o_proj", "mlp.c_proj"),
    # Mixture-of-experts MLPs: hook_mlp_out is the sparse block's output (routed experts, plus Qwen2-MoE's gated
    # shared expert); the experts' fused weights have no single down projection.
    "mixtral": _MOE_FAMILY,
    "qwen2_moe": _MOE_FAMILY,
    "qwen3_moe": Family("model.layers", "model.embed_tokens", "model.norm", _LLAMA, "self_attn.o_proj", "mlp.experts",
                        unavailable=_MOE),
    "gpt_neox": Family("gpt_neox.layers", "gpt_neox.embed_in", "gpt_neox.final_layer_norm", _GPT_NEOX,
                       "attention.dense", "mlp.dense_4h_to_h", parallel="use_parallel_residual"),
    "phi": Family("model.layers", "model.embed_tokens", "model.final_layernorm", _PHI, "self_attn.dense", "mlp.fc2",
                  parallel=True),
    "phi3": Family("model.layers", "model.embed_tokens", "model.norm", _PHI3, "self_attn.o_proj", "mlp.down_proj"),
    "cohere": Family("model.layers", "model.embed_tokens", "model.norm", _PARALLEL_LLAMA, "self_attn.o_proj",
                     "mlp.down_proj", parallel=True),
    # Granite scales both writes by residual_multiplier before adding them (read at the module, then scaled);
    # W_O alone is not the map into the residual stream there, so heads as matrices refuse it.
    "granite": Family("model.layers", "model.embed_tokens", "model.norm", _LLAMA, "self_attn.o_proj", "mlp.down_proj",
                      scales={"hook_attn_out": "residual_multiplier", "hook_mlp_out": "residual_multiplier"}),
    # Falcon (7B/40B style: alibi or rotary, parallel attention and MLP unless parallel_attn=False)
    "falcon": Family("transformer.h", "transformer.word_embeddings", "transformer.ln_f", _FALCON, "self_attention.dense",
                     "mlp.dense_4h_to_h", parallel=("parallel_attn", "new_decoder_architecture"),
                     copy_out=frozenset({"hook_mlp_out"}),
                     unavailable={"attn.hook_pattern": "Falcon's attention returns its weights only when the model "
                                  "is asked for them with output_attentions=True"}),
    "gptj": Family("transformer.h", "transformer.wte", "transformer.ln_f", _GPTJ, "attn.out_proj", "mlp.fc_out",
                   parallel=True),
}

_SITE_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_NATIVE_RE = re.compile(r"^([A-Za-z_][\w.]*)\.(input|output)$")
_LAYER_RE = re.compile(r"\.(\d+)(?:\.|$)")
NATIVE_HINT = "or a module path of the HF model with .input or .output (e.g. 'model.layers.0.mlp.act_fn.output')"


def native_site(path: str, kind: str) -> Site:
    """The native site at `path` (a module path, `kind` "input" or "output"). Its layer is the first numbered
    segment of the path (HF models number nothing else above their decoder layers), -1 when there is none."""
    m = _LAYER_RE.search(path)
    return Site(int(m.group(1)) if m else -1, kind, path)


@dataclass(frozen=True, order=True)
class Site:
    layer: int  # for a native site, the decoder layer its module lies in, -1 outside them
    kind: str  # one of KINDS, or "input" | "output" for a native site
    path: str = ""  # a native site's module path in the HF model; "" for the canonical sites

    @property
    def native(self) -> bool:
        return bool(self.path)

    @property
    def name(self) -> str:
        return f"{self.path}.{self.kind}" if self.path else f"blocks.{self.layer}.{self.kind}"

    def __str__(self) -> str:
        return self.name


def family_for(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise InterpError(f"architecture {model_type!r} has no site table (supported: {', '.join(FAMILIES)}); "
                          "load it with family='native' and name sites by module path (e.g. "
                          "'model.layers.0.mlp.output'), or add a Family for it to FAMILIES in interp/core/sites.py")
    return FAMILIES[model_type]


def native_family(hf: Any) -> Family:
    """A family with no site table, for an architecture FAMILIES lacks: only native sites (module paths) work.
    The decoder layers are the ModuleList holding config.num_hidden_layers modules; every canonical kind fails
    in one line. Raises InterpError when no such list exists."""
    n = getattr(hf.config, "num_hidden_layers", None)
    lists = [name for name, m in hf.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if not lists:
        raise InterpError(f"found no list of {n} decoder layers in this {hf.config.model_type} model; "
                          "it cannot be loaded with family='native'")
    embed = next((name for name, m in hf.named_modules() if m is hf.get_input_embeddings()), "")
    why = (f"{hf.config.model_type} has no site table (loaded with family='native'): name sites by module path "
           "with .input or .output")
    return Family(lists[0], embed, "", {}, "", "", unavailable={k: why for k in KINDS})


def check_tree(family: Family, hf: Any, model_type: str) -> None:
    """Fail at load, in one line, when the model's module tree lacks a module the family's table names (an
    attribute renamed by a new transformers release), instead of later at the first hook."""
    layer0 = f"{family.layers}.0"
    wanted = [family.layers, family.embed, family.final_norm]
    wanted += [f"{layer0}.{p}" for k, (p, _) in family.sites.items()
               if p and family.missing(k, hf.config) is None]
    wanted += [f"{layer0}.{p}" for p in (family.o_proj, family.down_proj) if p]
    for path in dict.fromkeys(w for w in wanted if w):
        try:
            hf.get_submodule(path)
        except AttributeError:
            import transformers

            raise InterpError(
                f"this {model_type} model has no module {path!r}, which interp's site table for {model_type} names "
                f"(transformers {transformers.__version__} may have renamed it): update FAMILIES in "
                "interp/core/sites.py, or load with family='native' and name sites by module path") from None


def _normalise_kind(kind: str) -> str:
    if kind in KINDS:
        return kind
    for k in KINDS:  # accept "resid_post" for "hook_resid_post" and "hook_z" for "attn.hook_z"
        if k.endswith(kind) and (k.endswith("." + kind) or k == "hook_" + kind or k.endswith(".hook_" + kind)):
            return k
    raise InterpError(f"unknown site kind {kind!r}; valid kinds: {', '.join(KINDS)} (as blocks.{{i}}.<kind>)")


def parse_sites(spec: str | Site | list[str | Site] | tuple, n_layers: int) -> list[Site]:
    """Parse site names. `blocks.3.hook_resid_post` is one site; a bare kind (`hook_resid_post`,
    `resid_post`) or `blocks.*.kind` means that kind at every layer; `<module path>.input|output` is a native
    site (checked against the model by `Model.sites`)."""
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
        elif (m := _NATIVE_RE.match(item)) is not None:
            sites = [native_site(m.group(1), m.group(2))]  # the model checks the path (`Model.sites`)
        elif item.startswith("blocks.*."):
            kind = _normalise_kind(item[len("blocks.*."):])
            sites = [Site(i, kind) for i in range(n_layers)]
        else:
            try:
                kind = _normalise_kind(item)
            except InterpError:
                raise InterpError(
                    f"unknown site {item!r}; write blocks.{{i}}.<kind> with i in 0..{n_layers - 1} and kind one of "
                    f"{', '.join(KINDS)}, a bare kind for every layer, {NATIVE_HINT}"
                ) from None
            sites = [Site(i, kind) for i in range(n_layers)]
        for s in sites:
            if not s.native and not 0 <= s.layer < n_layers:
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


# Models of each family, for the documentation's table (`families_markdown`).
EXAMPLES = {
    "llama": "Llama, SmolLM2", "qwen2": "Qwen2, Qwen2.5 (the bundled Qwen2.5-Coder)", "mistral": "Mistral",
    "gemma2": "Gemma 2", "gemma3_text": "Gemma 3 (text)", "gpt2": "GPT-2", "qwen3": "Qwen3", "gemma": "Gemma",
    "olmo": "OLMo", "olmo2": "OLMo 2", "stablelm": "StableLM", "starcoder2": "StarCoder2", "mixtral": "Mixtral",
    "qwen2_moe": "Qwen1.5-MoE, Qwen2-MoE", "qwen3_moe": "Qwen3-MoE", "gpt_neox": "Pythia, GPT-NeoX", "phi": "Phi-1, 1.5, 2",
    "phi3": "Phi-3, 3.5", "cohere": "Command R", "granite": "Granite 3", "falcon": "Falcon", "gptj": "GPT-J",
}
_NO_QKV = "no attn.hook_q/k/v (fused projection)"


def families_markdown() -> str:
    """The table of supported families and what each lacks, as Markdown (the README holds this text; a test
    checks that it is current)."""
    rows = ["| model_type | models | blocks | lacks / differs |", "|---|---|---|---|"]
    for name, fam in FAMILIES.items():
        flags = fam.parallel_flags
        blocks = "parallel" if fam.parallel is True else f"parallel if {' or '.join(flags)}" if flags else "sequential"
        notes = []
        if fam.parallel is True:
            notes.append("no hook_resid_mid")
        elif flags:
            notes.append("no hook_resid_mid when parallel")
        if not any(k in fam.sites for k in ("attn.hook_q", "attn.hook_k", "attn.hook_v")):
            notes.append(_NO_QKV)
        notes += [f"no {k} ({why.split(';')[0].split(':')[0]})" for k, why in fam.unavailable.items()]
        notes += [f"{k} = module output x {attr}" for k, attr in fam.scales.items()]
        if "no single down projection" in str(fam.unavailable):
            notes.append("hook_mlp_out is the sparse block's output")
        rows.append(f"| {name} | {EXAMPLES.get(name, '')} | {blocks} | {'; '.join(notes) or 'every site'} |")
    return "\n".join(rows)
