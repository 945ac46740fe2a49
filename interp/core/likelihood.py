"""Log-probabilities of continuations given their prompts, batched, with shared prompt prefixes run once.

Multiple-choice evaluation (TruthfulQA's MC1 and MC2) scores every answer of every question by the total
log-probability of the answer's tokens after the question; probing (ITI) reads activations at each answer's last
token. Both are "one prompt, many continuations", which this module runs with little waste:
- the text every prompt begins with (a few-shot preamble and instruction) runs once;
- each prompt runs once for all its continuations (`PrefixKV.extend`), minus its last token;
- each row then runs only the prompt's last token (whose logits predict the first continuation token) and the
  continuation's own tokens.
Where a cached prefix would not be exact (a position- or row-dependent intervention is active, see
`interp.core.prefix.usable`) or is switched off (`use_prefix_cache`), every row runs its whole text.

`continuation_edits`: interventions that act on the continuation's tokens only (each row's scored tokens), never
on the prompt, whatever the positions they would otherwise touch. ITI's multiple choice scores answers this way
(honest_llama's `tqa_run_probs` shifts the heads from the answer on). Those tokens always lie in each row's own
part, so the cached prefix stays exact under them.

Token boundary: a continuation's tokens are the tokens of `prompt + continuation` after the longest common prefix
with the tokens of `prompt` (they coincide whenever the tokenizer does not merge across the boundary; where it does,
the merged token counts as the continuation's). A continuation that adds no token is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from interp.core.prefix import MIN_PREFIX, PrefixKV, common_prefix_length, usable, wanted
from interp.core.runner import forward
from interp.core.sites import Site
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.hooks import HookFn
    from interp.core.interventions import Intervention
    from interp.core.model import Model


@dataclass
class Scored:
    """Per prompt, the total log-probability and token count of each of its continuations (`logprobs[i][j]`), and
    the activations captured at each continuation's last token, rows in (prompt, continuation) order."""

    logprobs: list[Float[Tensor, "c"]]
    n_tokens: list[Tensor]
    acts: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class _Row:
    prompt: int
    ids: list[int]  # the whole text's tokens
    start: int  # index of the first continuation token in `ids`


def _rows(model: "Model", prompts: Sequence[str], options: Sequence[Sequence[str]]) -> list[_Row]:
    if isinstance(prompts, str) or len(prompts) == 0:
        raise InterpError("prompts must be a non-empty list of strings")
    if len(options) != len(prompts):
        raise InterpError(f"got {len(prompts)} prompts and {len(options)} continuation lists; give one list per prompt")
    rows = []
    prompt_ids = model.encode(list(prompts))
    for i, (p, conts) in enumerate(zip(prompts, options)):
        if isinstance(conts, str) or len(conts) == 0:
            raise InterpError(f"prompt {i} has no continuations; give a non-empty list of strings for each prompt")
        for ids in model.encode([p + c for c in conts]):
            start = common_prefix_length([prompt_ids[i], ids])
            if start >= len(ids):
                raise InterpError(f"a continuation of prompt {i} adds no token ({p[-40:]!r}); remove empty continuations")
            if start == 0:
                raise InterpError(f"prompt {i} is empty after tokenisation; give a prompt with at least one token")
            rows.append(_Row(i, ids, start))
    return rows


@torch.no_grad()
def continuations(model: "Model", prompts: Sequence[str], options: Sequence[Sequence[str]], sites=(),
                  logprobs: bool = True, rows_per_forward: int = 16, prompts_per_prefix: int = 8,
                  use_prefix_cache: bool | None = None, progress: bool | None = None, desc: str = "score",
                  continuation_edits: Sequence["Intervention"] = ()) -> Scored:
    """Score `options[i][j]` as a continuation of `prompts[i]` (raw text: apply a chat template beforehand), and
    capture `sites` at each continuation's last token. logprobs=False skips the unembedding (capture only: the
    forward stops after the deepest site). `continuation_edits` act on the continuations' tokens only (see the
    module docstring); the captured sites see them."""
    rows = _rows(model, prompts, options)
    edits: dict[Site, list[HookFn]] = {}
    for iv in continuation_edits:
        for site, site_fns in iv.hooks(model).items():
            edits.setdefault(site, []).extend(site_fns)
    site_list = model.sites(sites) if sites else []
    if not logprobs and not site_list:
        raise InterpError("nothing to compute: ask for logprobs or name sites to capture")
    stop = max(s.layer for s in site_list) if not logprobs else None
    by_prompt: dict[int, list[int]] = {}
    for r, row in enumerate(rows):
        by_prompt.setdefault(row.prompt, []).append(r)
    # each prompt's cacheable part: what all its rows share, up to their first scored token, minus one token
    cut = {i: min(common_prefix_length([rows[r].ids for r in rs]), min(rows[r].start for r in rs)) - 1
           for i, rs in by_prompt.items()}
    longest = max(len(r.ids) for r in rows)
    shortest_own = min(len(rows[r].ids) - cut[i] for i, rs in by_prompt.items() for r in rs)
    cached = wanted(model, use_prefix_cache) and getattr(model.backend, "supports_prefix", False) and \
        min(cut.values()) >= 1 and usable(model, longest, shortest_own)
    if cached:
        heads = [rows[by_prompt[i][0]].ids[:cut[i]] for i in sorted(by_prompt)]
        shared = min(common_prefix_length(heads), min(len(h) for h in heads) - 1)
        preamble = PrefixKV.compute(model, [heads[0][:shared]], stop) if shared >= MIN_PREFIX else None
    lp = torch.zeros(len(rows))
    ntok = torch.tensor([len(r.ids) - r.start for r in rows])
    got: dict[Site, list[tuple[list[int], Tensor]]] = {s: [] for s in site_list}
    groups = [sorted(by_prompt)[k:k + prompts_per_prefix] for k in range(0, len(by_prompt), prompts_per_prefix)]
    bar = tqdm(total=len(rows), desc=desc, unit="row", disable=not (progress if progress is not None else len(rows) > 64))
    for group in groups:
        prefix = None
        if cached:
            if preamble is not None:
                prefix = preamble.extend(model, [rows[by_prompt[i][0]].ids[shared:cut[i]] for i in group])
            else:
                prefix = PrefixKV.compute(model, [rows[by_prompt[i][0]].ids[:cut[i]] for i in group], stop)
        members = [(g, r) for g, i in enumerate(group) for r in by_prompt[i]]
        members.sort(key=lambda m: -len(rows[m[1]].ids))
        for k in range(0, len(members), rows_per_forward):
            chunk = members[k:k + rows_per_forward]
            own = [rows[r].ids[cut[rows[r].prompt]:] if cached else rows[r].ids for _, r in chunk]
            _forward(model, rows, chunk, own, prefix, site_list, stop, lp, got, edits)
            bar.update(len(chunk))
    bar.close()
    acts = {}
    for s in site_list:
        order = torch.tensor([r for index, _ in got[s] for r in index])
        values = torch.cat([v for _, v in got[s]])
        acts[s.name] = values[torch.argsort(order)]
    return Scored([lp[rs] for _, rs in sorted(by_prompt.items())], [ntok[rs] for _, rs in sorted(by_prompt.items())], acts)


def _only_at(fn: "HookFn", mask: Tensor) -> "HookFn":
    """`fn` where `mask` [batch, pos] is true; the value as it was elsewhere."""
    def wrapped(site: Site, x: Tensor) -> Tensor | None:
        if tuple(x.shape[:2]) != tuple(mask.shape):
            raise InterpError(f"a continuation edit at {site} met a value of shape {tuple(x.shape)}; it needs "
                              f"[batch, pos, ...] with {tuple(mask.shape)} leading")
        y = fn(site, x)
        if y is None:
            return None
        m = mask.to(x.device).view(*mask.shape, *(1,) * (x.dim() - 2))
        return torch.where(m, y, x)

    return wrapped


def _forward(model: "Model", rows: list[_Row], chunk: list[tuple[int, int]], own: list[list[int]], prefix: PrefixKV | None,
             sites: list[Site], stop: int | None, lp: Tensor, got: dict[Site, list],
             edits: dict[Site, list["HookFn"]] | None = None) -> None:
    """One forward of `chunk` rows: their scored tokens' log-probabilities into `lp`, their sites into `got`;
    `edits` act on the scored (continuation) tokens only."""
    batch = model.pad(own)
    index = [r for _, r in chunk]
    seen: dict[Site, Tensor] = {}
    scored = [len(rows[r].ids) - rows[r].start for r in index]
    fns: dict[Site, list[HookFn]] = {}
    if edits:  # left padding: row b's continuation is its last scored[b] columns
        width = batch.input_ids.shape[1]
        mask = torch.arange(width)[None, :] >= width - torch.tensor(scored)[:, None]
        fns = {site: [_only_at(fn, mask) for fn in site_fns] for site, site_fns in edits.items()}
    for s in sites:  # readers after the edits, so captured sites see them
        fns.setdefault(s, []).append(lambda site, x: seen.__setitem__(site, x[:, -1].detach().float().cpu()))
    cont = torch.tensor([g for g, _ in chunk]) if prefix is not None else None
    out = forward(model, batch, hooks=fns, prefix=prefix, rows=cont, stop_after=stop, logits=max(scored) + 1)
    for s in sites:
        got[s].append((index, seen[s]))
    if stop is not None:
        return
    assert out.logits is not None  # logits were asked for and the forward ran to the end
    logits = out.logits.float()
    width = logits.shape[1]
    targets = batch.input_ids[:, -width + 1:] if width > 1 else batch.input_ids[:, :0]
    norm = torch.logsumexp(logits[:, :-1], -1)
    token_lp = logits[:, :-1].gather(-1, targets[..., None])[..., 0] - norm  # [b, width - 1]
    for b, (r, n) in enumerate(zip(index, scored)):
        lp[r] = token_lp[b, -n:].sum().cpu()
