"""`Model`: an HF causal LM with its tokenizer, canonical sites, chat formatting and batched left-padded inputs.

The model's weights are never changed by anything in this library: interventions are hooks that live only
inside a `with` block, and weight edits (orthogonalisation) work on a copy that is written to disk. Nor is its
tokenizer (a missing pad token is `Model.pad_id`, the EOS) or any default: the system prompt is a value passed to
each call (`System`, by default `DEFAULT_SYSTEM`), and the state of the forward now running is `Model.run_context`,
set and restored by the context managers that need it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence, cast

import torch
from jaxtyping import Int
from torch import Tensor, nn

from interp.core.hooks import RunContext
from interp.core.sites import Family, Site, check_layer, check_tree, family_for, native_family, parse_sites

# the system-prompt value, defined once in interp.core.system and re-exported here
from interp.core.system import DEFAULT_SYSTEM, NO_SYSTEM, NoSystem, System, system_option, system_record  # noqa: F401
from interp.errors import InterpError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from interp.core.activations import Activations
    from interp.core.generation import Completion
    from interp.core.interventions import Intervention

_PLACEHOLDER = "\x00INSTRUCTION\x00"
_SYSTEM_MARKER = "\x00SYSTEM\x00"


@dataclass
class TokenBatch:
    """A left-padded batch: pad tokens first, so every prompt ends at the last column."""

    input_ids: Int[Tensor, "batch seq"]
    attention_mask: Int[Tensor, "batch seq"]
    position_ids: Int[Tensor, "batch seq"]

    @property
    def lengths(self) -> Int[Tensor, "batch"]:
        return self.attention_mask.sum(-1)

    def inputs(self) -> dict[str, Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}


def position_ids_for(mask: Tensor) -> Tensor:
    """Position ids that count only real tokens (left padding would otherwise shift every position)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class Model:
    """A loaded causal LM. Build one with `interp.load(...)`."""

    def __init__(self, hf: PreTrainedModel, tokenizer, name: str, backend: str = "hooks", source: str | None = None,
                 backend_options: dict | None = None, family: Family | str | None = None):
        """family: None (the site table of the config's model_type), a `Family` of your own, or "native" (an
        architecture without a table: only module-path sites, see `interp.core.sites`). Raises InterpError for an
        unknown model_type, and when the module tree lacks a module the table names."""
        self.hf = hf.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.source = source or name
        cfg = hf.config
        if family == "native":
            self.family: Family = native_family(hf)
        elif isinstance(family, Family):
            self.family = family
        elif family is None:
            self.family = family_for(cfg.model_type)
        else:
            raise InterpError(f"family must be None, a Family or 'native', got {family!r}")
        check_tree(self.family, hf, cfg.model_type)
        # the decoder layers by index (the TransformerLens backend points this at its bridge blocks when it rewires
        # the tree; the patching sweep runs a tail of the list while hooks stay keyed by the full list's indices)
        self.layers = cast(nn.ModuleList, hf.get_submodule(self.family.layers))
        self.n_layers: int = cfg.num_hidden_layers
        self.d_model: int = cfg.hidden_size
        self.n_heads: int = cfg.num_attention_heads
        self.d_head: int = getattr(cfg, "head_dim", None) or self.d_model // self.n_heads
        self.n_ctx: int = getattr(cfg, "max_position_embeddings", 0) or getattr(cfg, "n_positions", 2048)
        # The pad id of left-padded batches: the tokenizer's own, else its EOS (the tokenizer is never changed;
        # pad columns are masked out, so any id works). None when it has neither: `pad` then fails loudly.
        self.pad_id: int | None = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._backend_name = backend
        self.backend_options = dict(backend_options or {})  # e.g. {"remote": True} for nnsight on NDIF
        self._backend = None
        self._eoi_ids: list[int] | None = None
        self._special_prefix: list[int] | None = None
        # What the forward now running needs to know (active interventions, prefix pass, generation step); set
        # and restored by context managers (interp.core.interventions.applied, interp.core.hooks.prefix_pass).
        self.run_context = RunContext()

    # ----- identity -----
    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the input embeddings (with accelerate's `device_map`, the first device;
        a model offloaded to disk there has its embeddings on the CPU). Captures always land on the CPU."""
        weight = self.hf.get_input_embeddings().weight
        return torch.device("cpu") if weight.device.type == "meta" else weight.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def fingerprint(self) -> dict:
        """What must match for activations, directions or probes to be reused with this model."""
        return {"name": self.name, "model_type": self.hf.config.model_type, "n_layers": self.n_layers, "d_model": self.d_model}

    def check_compatible(self, fingerprint: dict, what: str) -> None:
        mine = self.fingerprint
        for key in ("n_layers", "d_model", "name"):
            if key in fingerprint and fingerprint[key] != mine[key]:
                raise InterpError(
                    f"{what} comes from another model ({key}={fingerprint[key]!r}, this model has {key}={mine[key]!r}); "
                    f"recompute it with {self.name}"
                )

    def __repr__(self) -> str:
        return f"Model({self.name!r}, layers={self.n_layers}, d_model={self.d_model}, backend={self._backend_name!r}, {self.dtype}, {self.device})"

    # ----- sites -----
    def sites(self, spec) -> list[Site]:
        sites = parse_sites(spec, self.n_layers)
        for site in sites:  # a kind this family lacks (resid_mid of parallel blocks, ...) fails here, in one line
            self._check_available(site)
        return sites

    def _check_available(self, site: Site) -> None:
        if site.native:
            if site.layer >= self.n_layers:
                raise InterpError(f"layer {site.layer} of site {site.name} is out of range: this model has layers "
                                  f"0..{self.n_layers - 1}")
            self._native_module(site)
            return
        reason = self.family.missing(site.kind, self.hf.config)
        if reason is not None:
            raise InterpError(f"{site} is not available for {self.hf.config.model_type} models: {reason}")

    def check_layer(self, layer: int, what: str = "layer") -> int:
        return check_layer(layer, self.n_layers, what)

    def _native_module(self, site: Site) -> nn.Module:
        try:
            return self.hf.get_submodule(site.path)
        except AttributeError:
            raise InterpError(f"{self.name} has no module {site.path!r} (site {site.name}); module paths look like "
                              f"'{self.family.layers}.0.<child>', see model.hf.named_modules()") from None

    def site_module(self, site: Site) -> tuple[nn.Module, str]:
        """The module a site is read at and how: "in" (its first input), "out" (its output), or "hook" (the
        output of a TransformerLens hook point, already the site's value). Raises InterpError for a site this model
        or its backend does not have."""
        self._check_available(site)
        if hasattr(self.backend, "site_module"):  # the TransformerLens backend reads at its own hook points
            return self.backend.site_module(site)
        if site.native:
            return self._native_module(site), "in" if site.kind == "input" else "out"
        if site.kind not in self.family.sites:
            raise InterpError(f"{site} is not available for {self.hf.config.model_type} models; "
                              f"available kinds: {', '.join(self.family.sites)}")
        path, where = self.family.sites[site.kind]
        layer = self.layers[site.layer]
        return (layer.get_submodule(path) if path else layer), where

    # ----- chat formatting -----
    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def format_chat(self, instruction: str, system: System = DEFAULT_SYSTEM) -> str:
        """The tokenizer's own chat template: optional system turn, the user turn, the generation prompt.

        system (a `System`, or its option string, see `system_option`): text for the system message; None or
        "default": the template decides (Qwen's inserts "You are Qwen, ..."); NO_SYSTEM or "none": no system
        turn at all (`_without_system`). The library default is `DEFAULT_SYSTEM`.
        """
        if not self.has_chat_template:
            raise InterpError(f"{self.name} has no chat template; pass chat=False to use raw prompts")
        system = system_option(system)
        if isinstance(system, NoSystem):
            return self._without_system(instruction)
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": instruction}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _without_system(self, instruction: str) -> str:
        """The chat rendering with no system turn, for any template (no per-family code).

        Templates that insert a default system prompt give no way to ask for none, so render with a marker
        system message and cut its turn out: from after the tokenizer's special prefix (a BOS written by the
        template) to the start of the user header, which begins at the last special token before the word
        "user" between the marker and the instruction (ChatML "<|im_start|>user", Llama 3 "<|start_header_id|>").
        Templates that fold the system text into the user turn (Gemma) have no user header there: only the
        marker and its separator are cut.
        """
        text = self.tokenizer.apply_chat_template(
            [{"role": "system", "content": _SYSTEM_MARKER}, {"role": "user", "content": _PLACEHOLDER}],
            tokenize=False, add_generation_prompt=True)
        i, j = text.find(_SYSTEM_MARKER), text.find(_PLACEHOLDER)
        if i < 0 or j < i:
            raise InterpError(f"the chat template of {self.name} does not render a system message before the user "
                              "turn; use system='default' or a system text instead of 'none'")
        between = text[i + len(_SYSTEM_MARKER):j]
        role = between.rfind("user")
        if role < 0:  # system text folded into the user turn
            out = text[:i] + text[j:]
        else:
            specials = [t for t in self.tokenizer.all_special_tokens + list(self.tokenizer.get_added_vocab()) if t]
            starts = [between.rfind(t, 0, role) for t in specials]
            header = max([s for s in starts if s >= 0], default=role)
            bos = self.tokenizer.decode(self.special_prefix) if self.special_prefix else ""
            start = len(bos) if bos and text.startswith(bos) else 0
            out = text[:start] + between[header:] + text[j:]
        return out.replace(_PLACEHOLDER, instruction)

    @property
    def eoi_ids(self) -> list[int]:
        """Token ids after the instruction in the chat template (end of user turn + assistant header)."""
        if self._eoi_ids is None:
            text = self.format_chat(_PLACEHOLDER)
            suffix = text[text.index(_PLACEHOLDER) + len(_PLACEHOLDER):]
            self._eoi_ids = self.tokenizer(suffix, add_special_tokens=False).input_ids
            if not self._eoi_ids:
                raise InterpError(f"the chat template of {self.name} puts nothing after the instruction; use positions='last'")
        return self._eoi_ids

    @property
    def n_eoi(self) -> int:
        return len(self.eoi_ids)

    def eoi_tokens(self) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(self.eoi_ids)

    def uses_chat(self, chat: bool | None) -> bool:
        """Whether prompts get the chat template: `chat`, or by default when the tokenizer has one."""
        return self.has_chat_template if chat is None else bool(chat)

    def prepare_prompts(self, prompts: Sequence[str], chat: bool | None = None,
                        system: System = DEFAULT_SYSTEM) -> list[str]:
        """Validate prompts and apply the chat template (by default when the tokenizer has one)."""
        check_prompts(prompts)
        return [self.format_chat(p, system) for p in prompts] if self.uses_chat(chat) else list(prompts)

    # ----- tokens -----
    @property
    def special_prefix(self) -> list[int]:
        """The ids the tokenizer puts before any text by itself: BOS where it adds one (Llama, Gemma), else none
        (Qwen, SmolLM2). Special tokens it would append (an EOS) are never wanted at the end of a prompt."""
        if self._special_prefix is None:
            plain = self.tokenizer("x", add_special_tokens=False).input_ids
            full = self.tokenizer("x", add_special_tokens=True).input_ids
            starts = [i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain]
            self._special_prefix = full[:starts[0]] if starts else []
        return self._special_prefix

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of already-formatted prompts (raw or chat-formatted), by one rule for special tokens.

        Every prompt starts with the tokenizer's special prefix (`special_prefix`) exactly once: a chat template
        writes it into the text itself (Llama 3's `<|begin_of_text|>`, Gemma's `<bos>`), a raw prompt gets it
        here. Everything that turns a prompt into ids (capture, logits, generate, scoring, the attack engine's
        prompts and its retokenisation check) comes through this function, so they all agree.
        """
        prefix = self.special_prefix
        rows = self.tokenizer(list(texts), add_special_tokens=False).input_ids
        ids = [row if row[:len(prefix)] == prefix else prefix + row for row in rows]
        for text, row in zip(texts, ids):
            if len(row) > self.n_ctx:
                raise InterpError(
                    f"a prompt is {len(row)} tokens long, more than the model's context of {self.n_ctx}: "
                    f"shorten it ({text[:60]!r}...)"
                )
        return ids

    def pad(self, ids: Sequence[Sequence[int]]) -> TokenBatch:
        """Left-pad token id lists into a batch on the model's device."""
        width = max(len(r) for r in ids)
        pad_id = self.pad_id
        if pad_id is None:
            raise InterpError(f"the tokenizer of {self.name} has neither a pad nor an EOS token; batches cannot be padded")
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            if row:
                input_ids[i, width - len(row):] = torch.tensor(row)
                mask[i, width - len(row):] = 1
        dev = self.device
        return TokenBatch(input_ids.to(dev), mask.to(dev), position_ids_for(mask).to(dev))

    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        return self.pad(self.encode(texts))

    # ----- backends -----
    @property
    def backend(self):
        if self._backend is None:
            from interp.core.backends import make_backend

            self._backend = make_backend(self._backend_name, self)
        return self._backend

    # ----- the flow -----
    def capture(self, prompts: Sequence[str], sites, positions="last", batch_size: int = 16, labels: Sequence | None = None,
                chat: bool | None = None, system: System = DEFAULT_SYSTEM, progress: bool | None = None,
                use_prefix_cache: bool | None = None) -> "Activations":
        """Batched activation capture; see `interp.core.capture.capture`."""
        from interp.core.capture import capture

        return capture(self, prompts, sites, positions=positions, batch_size=batch_size, labels=labels, chat=chat,
                       system=system, progress=progress, use_prefix_cache=use_prefix_cache)

    @contextmanager
    def intervene(self, *interventions: "Intervention") -> Iterator["Model"]:
        """Apply interventions to every forward (and `generate`) inside the block; the model is untouched after."""
        from interp.core.interventions import applied

        with applied(self, interventions):
            yield self

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 16, chat: bool | None = None,
                 system: System = DEFAULT_SYSTEM, interventions: Sequence["Intervention"] = (), progress: bool | None = None,
                 use_prefix_cache: bool | None = None) -> "list[Completion]":
        """Greedy, batched, KV-cached generation; returns only the new text of each prompt, as `Completion`s
        (strings that carry the generated token ids, `.ids`)."""
        from interp.core.generation import generate

        return generate(self, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat, system=system,
                        interventions=interventions, progress=progress, use_prefix_cache=use_prefix_cache)

    @torch.no_grad()
    def logits(self, prompts: Sequence[str], chat: bool | None = None, system: System = DEFAULT_SYSTEM, last_only: bool = True,
               batch_size: int = 16, use_prefix_cache: bool | None = None) -> Tensor:
        """Logits (fp32, on the CPU), one row per prompt in prompt order.

        last_only=True: at the last token of each prompt, [n, vocab]; the tokens every prompt shares at its start
        (the chat template's system prompt) run once and each batch continues from their KV cache
        (`use_prefix_cache`, by default on the CPU only; exact: see `interp.core.prefix`). last_only=False: at every token, [n, width, vocab],
        left-padded to the longest prompt like a batch: prompt i's tokens are its last `len_i` columns and the
        pad columns before them are zero.
        """
        from interp.core.capture import pad_left
        from interp.core.prefix import shared_prefix, wanted
        from interp.core.runner import forward

        ids = self.encode(self.prepare_prompts(prompts, chat, system))
        prefix = shared_prefix(self, ids) if wanted(self, use_prefix_cache) and last_only else None
        if prefix is not None:
            ids = [row[prefix.width:] for row in ids]
        width = max(len(r) for r in ids)
        outs = []
        for start in range(0, len(ids), batch_size):
            tb = self.pad(ids[start:start + batch_size])
            out = forward(self, tb, prefix=prefix, logits="last" if last_only else "all").logits
            assert out is not None  # logits were asked for and the forward ran to the end
            if last_only:
                outs.append(out.float().cpu())
            else:
                out = out.float() * tb.attention_mask[..., None]
                outs.append(pad_left(out.cpu(), width, [1]))
        result = torch.cat(outs)
        if self.run_context.verifier is not None:  # interp.core.verify: rerun on the other backends and compare
            self.run_context.verifier.logits(result, dict(prompts=prompts, chat=chat, system=system,
                                                          last_only=last_only, batch_size=batch_size))
        return result


def check_prompts(prompts) -> None:
    if isinstance(prompts, str):
        raise InterpError("prompts must be a list of strings, got a single string; wrap it in a list")
    if prompts is None or len(prompts) == 0:
        raise InterpError("the prompt list is empty; give at least one prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InterpError(f"prompt {i} is a {type(p).__name__}, not a string: every prompt must be a str")
        if not p.strip():
            raise InterpError(f"prompt {i} is empty; remove empty prompts")
