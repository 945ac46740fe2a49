"""Greedy, batched, KV-cached generation, optionally under interventions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from tqdm.auto import tqdm

from interp.core.interventions import applied
from interp.core.prefix import row_dependent, shared_prefix, wanted
from interp.core.system import DEFAULT_SYSTEM, System
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.interventions import Intervention
    from interp.core.model import Model


class Completion(str):
    """A generated text (decoded without special tokens, stripped) that also carries the token ids the model
    generated, `ids`: the new tokens up to, not including, the first end-of-sequence token. Scores computed on
    "the model's own completions" read `ids`, never a re-tokenisation of the text (which can differ)."""

    ids: tuple[int, ...]

    def __new__(cls, text: str, ids: Sequence[int]) -> "Completion":
        obj = super().__new__(cls, text)
        obj.ids = tuple(int(i) for i in ids)
        return obj


def _until_eos(tokens: Sequence[int], eos: int | Sequence[int] | None) -> list[int]:
    stop = set([eos] if isinstance(eos, int) else (eos or []))
    out = []
    for t in tokens:
        if t in stop:
            break
        out.append(int(t))
    return out


@torch.no_grad()
def generate(model: "Model", prompts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 16,
             chat: bool | None = None, system: System = DEFAULT_SYSTEM, interventions: Sequence["Intervention"] = (),
             progress: bool | None = None, use_prefix_cache: bool | None = None) -> list[Completion]:
    """Greedy completions of `prompts` (chat-formatted by default), returning only the new text, each a
    `Completion` (a str) that carries its generated token ids.

    Prompts are sorted by length into left-padded batches (kept in order under a row-dependent intervention);
    HF `generate` derives position ids from the attention mask and keeps a KV cache; interventions are hooks,
    so they act on every decoding step. The tokens every prompt shares at its start (the chat template's system
    prompt and user header) run once, under the interventions, and each batch continues from their KV cache
    (`use_prefix_cache`, by default on the CPU only; `interp.core.prefix` says when that is exact, and otherwise runs the full prompts).
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InterpError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    texts = model.prepare_prompts(prompts, chat, system)
    ids = model.encode(texts)
    out: list[Completion] = [Completion("", ())] * len(ids)
    show = progress if progress is not None else len(ids) > batch_size
    eos = model.hf.generation_config.eos_token_id
    with applied(model, interventions), tqdm(total=len(ids), desc="generate", unit="prompt", disable=not show) as bar:
        prefix = shared_prefix(model, ids, extra=max_new_tokens) if wanted(model, use_prefix_cache) else None
        if prefix is not None:
            ids = [row[prefix.width:] for row in ids]
        order = list(range(len(ids)))
        if not row_dependent(model):
            order.sort(key=lambda i: -len(ids[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = model.pad([ids[i] for i in rows])
            inputs = prefix.generate_inputs(batch) if prefix is not None else {
                "input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
            gen = model.hf.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                pad_token_id=model.pad_id, eos_token_id=eos,
            )
            new = gen[:, inputs["input_ids"].shape[1]:]
            for row, tokens in zip(rows, new):
                text = model.tokenizer.decode(tokens, skip_special_tokens=True).strip()
                out[row] = Completion(text, _until_eos(tokens.tolist(), eos))
            bar.update(len(rows))
    return out
