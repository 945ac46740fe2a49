"""Score many candidate directions at once (each candidate gets its own block of batch rows), and measure what
an edit costs on harmless text (`capability_cost`).

A candidate c applied to prompt p is row (c, p). The prompts' shared prefix (the chat template's system
prompt) is run once per candidate, and every row continues from its candidate's prefix KV cache. Rows of several candidates share a forward pass, each row
with its own intervention (`RowwiseAblate`, `RowwiseAdd`), and only the last position's logits are computed.
`candidates_per_forward=1` gives the one-candidate-at-a-time loop (prompts still batched), which the
benchmark compares against; both give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from interp.core.interventions import Intervention, RowwiseAblate, RowwiseAdd
from interp.core.prefix import PrefixKV, shared_length
from interp.core.runner import forward
from interp.core.system import DEFAULT_SYSTEM, System, system_record

if TYPE_CHECKING:
    from interp.core.model import Model

RowFn = Callable[[Tensor], Intervention]  # candidate index of each row -> the intervention for those rows
Reduce = Callable[[Tensor, Tensor], Tensor]  # (last-token logits [rows, vocab], prompt index [rows]) -> [rows]


@torch.no_grad()
def per_candidate(model: "Model", ids: Sequence[Sequence[int]], n_candidates: int, make: RowFn, reduce: Reduce,
                  rows_per_forward: int = 32, one_candidate_per_forward: bool = False,
                  desc: str = "score") -> Float[Tensor, "cand n"]:
    """`reduce` of the last-token logits of every (candidate, prompt) row, as a [candidate, prompt] table."""
    n = len(ids)
    prefix, ids = _candidate_prefixes(model, ids, n_candidates, make, rows_per_forward, one_candidate_per_forward)
    order = sorted(range(n), key=lambda i: -len(ids[i]))  # similar lengths share a forward: little padding
    rows = [(c, p) for c in range(n_candidates) for p in order]
    if one_candidate_per_forward:
        chunks = [rows[c * n + j: c * n + min(j + rows_per_forward, n)] for c in range(n_candidates)
                  for j in range(0, n, rows_per_forward)]
    else:
        chunks = [rows[i:i + rows_per_forward] for i in range(0, len(rows), rows_per_forward)]
    out = torch.empty(n_candidates, n)
    for chunk in tqdm(chunks, desc=desc, unit="forward", disable=len(chunks) < 4):
        cand = torch.tensor([c for c, _ in chunk])
        prompt = torch.tensor([p for _, p in chunk])
        batch = model.pad([ids[p] for p in prompt.tolist()])
        got = forward(model, batch, edits=[make(cand)], prefix=prefix, rows=cand if prefix is not None else None).logits
        assert got is not None  # logits were asked for and the forward ran to the end
        logits = got.float().cpu()
        out[cand, prompt] = reduce(logits, prompt)
    return out


def _candidate_prefixes(model: "Model", ids: Sequence[Sequence[int]], n_candidates: int, make: RowFn, rows_per_forward: int,
                        one_per_forward: bool) -> tuple[PrefixKV | None, list[list[int]]]:
    """The prompts' shared prefix run once per candidate (its intervention changes it), and the suffixes."""
    length = shared_length(model, ids, keep=1)
    if not length:
        return None, [list(r) for r in ids]
    step = 1 if one_per_forward else rows_per_forward
    parts = []
    for start in range(0, n_candidates, step):
        cand = torch.arange(start, min(start + step, n_candidates))
        with model.intervene(make(cand)):
            parts.append(PrefixKV.compute(model, [ids[0][:length]] * len(cand)))
    return PrefixKV.cat(parts), [list(r[length:]) for r in ids]


def ablation_scores(model: "Model", ids, directions: Float[Tensor, "cand d"], reduce: Reduce, **kw) -> Tensor:
    """`reduce` of the logits with each candidate direction ablated at every layer (directional ablation)."""
    return per_candidate(model, ids, directions.shape[0], lambda cand: RowwiseAblate(directions[cand]), reduce,
                         desc=kw.pop("desc", "ablation"), **kw)


def addition_scores(model: "Model", ids, vectors: Float[Tensor, "cand d"], layers: Sequence[int], reduce: Reduce,
                    **kw) -> Tensor:
    """`reduce` of the logits with each candidate vector added to `hook_resid_pre` of its layer, every position."""
    layer_t = torch.as_tensor(list(layers))
    return per_candidate(model, ids, vectors.shape[0], lambda cand: RowwiseAdd(vectors[cand], layer_t[cand].tolist()),
                         reduce, desc=kw.pop("desc", "addition"), **kw)


def kl_rows(clean: Float[Tensor, "n vocab"]) -> Reduce:
    """A `Reduce` giving KL(clean || steered) of the next-token distribution of each row."""
    p = clean.float().log_softmax(-1).cpu()  # beside the logits `per_candidate` hands over (on the CPU)

    def reduce(logits: Tensor, prompt: Tensor) -> Tensor:
        q = logits.log_softmax(-1)
        return (p[prompt].exp() * (p[prompt] - q)).sum(-1)

    return reduce


# ----- capability cost: what an edit costs on harmless text -----

@dataclass
class Reference:
    """Greedy completions of the plain model to harmless prompts, the yardstick of `capability_cost`: token ids of
    each chat-formatted prompt and of its completion, and the plain model's first-token log-probabilities."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    clean_first: Float[Tensor, "n vocab"]
    clean_ce: float  # the plain model's own cross-entropy on its completions (nats per token)
    n_tokens: int
    system: str = system_record(DEFAULT_SYSTEM)  # the system prompt the prompts were chat-formatted with (`system_record`)


@torch.no_grad()
def reference_completions(model: "Model", prompts: Sequence[str], n_tokens: int = 32, batch_size: int = 8,
                          system: System = DEFAULT_SYSTEM) -> Reference:
    """The plain model's greedy completions of `n_tokens` tokens (stopping at EOS) to `prompts`, computed once so
    several edits (hook ablation, a checkpoint, a search's trials) are measured against the same text."""
    texts = model.prepare_prompts(prompts, system=system)
    prompt_ids = model.encode(texts)
    answers = model.generate(prompts, max_new_tokens=n_tokens, batch_size=batch_size, system=system)
    # the ids the model generated, not a re-tokenisation of the stripped text (which can differ)
    completion = [list(a.ids[:n_tokens]) or [model.tokenizer.eos_token_id] for a in answers]
    first, ce = _completion_scores(model, prompt_ids, completion, batch_size)
    return Reference(prompt_ids, completion, first, float(ce.sum() / sum(map(len, completion))), n_tokens,
                     system_record(system))


def _completion_scores(model: "Model", prompt_ids: list[list[int]], completion: list[list[int]],
                       batch_size: int) -> tuple[Tensor, Tensor]:
    """First-token log-probabilities [n, vocab] and the summed cross-entropy of each completion [n]."""
    firsts, ces = [], []
    for start in range(0, len(prompt_ids), batch_size):
        rows = [p + c for p, c in zip(prompt_ids[start:start + batch_size], completion[start:start + batch_size])]
        batch = model.pad(rows)
        logits = forward(model, batch, logits="all").logits
        assert logits is not None  # logits were asked for and the forward ran to the end
        logp = logits.float().log_softmax(-1).cpu()
        width = logp.shape[1]
        for b, c in enumerate(completion[start:start + batch_size]):
            first = width - len(c) - 1  # the last prompt position predicts the first completion token
            firsts.append(logp[b, first])
            pred = logp[b, first:width - 1]  # positions predicting each completion token
            ces.append(-pred.gather(-1, torch.tensor(c)[:, None]).sum())
    return torch.stack(firsts), torch.stack(ces)


@torch.no_grad()
def capability_cost(model: "Model", harmless: "Sequence[str] | Reference", interventions: Sequence[Intervention] = (),
                    edited: "Model | None" = None, n_tokens: int = 32, batch_size: int = 8,
                    system: System = DEFAULT_SYSTEM) -> dict:
    """What an edit costs on harmless text: {"kl": mean first-token KL(plain || edited), "ce": cross-entropy
    (nats per token) of the plain model's greedy completions under the edited model, "ce_clean": the plain
    model's own, "n_prompts", "n_tokens"}.

    The edit is `interventions` applied to `model` (hooks), or `edited`, another Model with the same tokenizer
    (e.g. an orthogonalised checkpoint). `harmless` is prompts, or a `Reference` from `reference_completions`
    (pass one to measure many edits against the same completions without generating again). `system`: how
    prompts are chat-formatted (a `Reference` carries its own, `Reference.system`, recorded in the result).
    """
    ref = harmless if isinstance(harmless, Reference) else reference_completions(model, harmless, n_tokens,
                                                                                  batch_size, system)
    target = edited if edited is not None else model
    with target.intervene(*interventions):
        first, ce = _completion_scores(target, ref.prompt_ids, ref.completion_ids, batch_size)
    p = ref.clean_first
    kl = (p.exp() * (p - first)).sum(-1)
    return {"kl": kl.mean().item(), "ce": float(ce.sum() / sum(map(len, ref.completion_ids))), "ce_clean": ref.clean_ce,
            "n_prompts": len(ref.prompt_ids), "n_tokens": ref.n_tokens, "system": ref.system}
