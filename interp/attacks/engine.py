"""The token-search engine shared by subspace rerouting (SSR) and GCG.

An attack prompt is the chat-formatted behaviour with `[MASK]` slots anywhere in the user message. Each step,
for every behaviour being attacked:

1. gradient: one batched forward of each behaviour's current best tokens, with the mask embeddings as leaves;
   d loss / d one-hot token = (d loss / d embedding) @ W_E^T  ([m, vocab] per behaviour), as in GCG;
2. candidates: `candidates` copies of the best tokens, each with `n_replace` random masked positions swapped
   for a random token among the top-k of the negative gradient (disallowed tokens excluded). `n_replace`
   starts at the number of masks and shrinks with the loss (SSR) or stays fixed (GCG's 1);
3. retokenisation check: each candidate prompt is rendered to text, chat-formatted and encoded again, in one
   batched tokenizer call; candidates whose ids change are dropped, so the string that is judged (and logged)
   is exactly what was optimised;
4. evaluation: every behaviour's candidates go through the model together, many rows per forward, the
   forward stopped after the deepest layer the loss reads (`interp.core.hooks.hooked(stop_after=...)`); the batch
   size halves on out-of-memory;
5. a buffer of the best few candidates per behaviour; after `patience` steps without improvement the search
   jumps to a worse buffer entry (sampled by softmax(-loss)) to escape a plateau.

A behaviour stops at the step budget, at the forward budget (`max_forwards` candidate rows evaluated; the last
step is cut to fit it exactly), at the wall-time cap, or (with a warning and a `stop_reason`) after
`max_empty_steps` steps in a row that kept no candidate; and, under the preset's judging schedule, when the judge
(a callback) says success. Forwards are counted per behaviour: candidate rows evaluated (`forwards`) and gradient
forwards (`grad_forwards`, one per step).

How many attempts the judge sees (`attempts`, N). Success is best-of-N: a behaviour succeeds when any of its
judged attempts passes, so N is part of every success rate.
- `attempts=None` (every preset's default): the preset's schedule. The best candidate is judged while searching
  (every `judge_every` steps, and when the loss crosses `judge_below`), a success stops the search (the judge is
  also the early-stop oracle), and at the end of the budget every distinct buffer entry (and the best-loss
  tokens) is judged, in one batch: Winninger et al. found the best-loss suffix failing where most buffer entries
  succeeded. N differs between behaviours and presets (nanoGCG's buffer of 0 leaves at most two).
- `attempts=N`: the same N for every preset and method. The judge never stops a search; at the end of the budget
  the N lowest-loss distinct suffixes the search evaluated (kept apart from the search buffer, so its size does
  not cap N) are judged in one batch. N=1 judges the best-loss suffix once.
Either way each behaviour's single-attempt verdict is that of its best-loss suffix at the end of its search
(`entry` 0 of the final batch), judged once; it is exact unless the judge stopped the search early
(`SearchResult.stopped_by_judge`), where the suffix judged at the stop stands in for it.
`build_prompt` refuses an initial prompt that does not survive the retokenisation check itself.
Behaviours run `parallel` at a time; a finished one is replaced by the next in the queue.

Prefix KV cache: everything before a behaviour's first mask is fixed, so its keys and values are computed
once (batched, left-padded) and only the rest (the masks, the end of the chat template, GCG's target) is run
each step. `interp.core.prefix.PrefixKV` keeps them, one per behaviour; every forward gets a fresh cache built from
the rows it needs, because a forward appends to its cache in place. Rows of a batch have different prefix and
suffix lengths: both parts are left-padded, the attention mask covers prefix and suffix, and position ids count
real tokens only, so each row computes exactly what it would alone. The cache is skipped where it would not be
exact (`interp.core.prefix.usable`: a row-dependent intervention active, or a sliding window shorter than a row).
"""

from __future__ import annotations

import functools
import math
import time
import warnings
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformers import DynamicCache

from interp.attacks.losses import AttackLoss, RowBatch
from interp.core.prefix import PrefixKV, usable
from interp.core.runner import forward
from interp.core.system import DEFAULT_SYSTEM, System
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.model import Model
    from interp.core.sites import Site

MASK = "[MASK]"
BEHAVIOR = "{behavior}"
_SENTINEL = "\x00MASK\x00"


# ----- prompts -----

def check_template(template: str) -> str:
    """A template must hold `{behavior}` and at least one `[MASK]`."""
    if not isinstance(template, str):
        raise InterpError(f"the template must be a string, got {type(template).__name__}")
    missing = [what for what in (BEHAVIOR, MASK) if what not in template]
    if missing:
        raise InterpError(
            f"the template {template!r} has no {' and no '.join(missing)}: write the behaviour as {BEHAVIOR} and "
            f"each optimised token as {MASK}, e.g. '{BEHAVIOR}{MASK * 6}'"
        )
    return template


@dataclass
class AttackPrompt:
    """One behaviour as token ids, with the optimised ("masked") positions and an optional GCG target."""

    behavior: str
    ids: list[int]  # the chat-formatted prompt, masks filled with the initial token
    mask_positions: list[int]  # indices into ids, ascending
    texts: list[str]  # user-message text around the runs of adjacent masks (len = runs + 1)
    runs: list[tuple[int, int]]  # [start, end) indices into mask_positions of each run of adjacent masks
    target_ids: list[int] = field(default_factory=list)  # appended after the prompt (GCG)
    key: str = ""  # identifies the behaviour in logs and seeds its random generator

    @property
    def n_mask(self) -> int:
        return len(self.mask_positions)

    @property
    def prefix_len(self) -> int:
        return self.mask_positions[0]

    def render(self, run_texts: Sequence[str]) -> str:
        """The user message with each run of masks replaced by its decoded text."""
        out = [self.texts[0]]
        for text, after in zip(run_texts, self.texts[1:]):
            out += [text, after]
        return "".join(out)


def render_tokens(model: "Model", prompt: AttackPrompt, tokens: Int[Tensor, "c m"]) -> list[str]:
    """The user messages of candidate mask tokens [c, m] of one prompt (each run of masks decoded as one text)."""
    flat = [row[a:b] for row in tokens.tolist() for a, b in prompt.runs]
    decoded = model.tokenizer.batch_decode(flat)
    k = len(prompt.runs)
    return [prompt.render(decoded[i * k:(i + 1) * k]) for i in range(len(tokens))]


def reencode(model: "Model", prompt: AttackPrompt, tokens: Int[Tensor, "c m"], chat: bool | None = None,
             system: System = DEFAULT_SYSTEM) -> list[list[int]]:
    """The ids that candidate mask tokens [c, m] read back as: rendered to text, chat-formatted and encoded by the
    same path as every other prompt (`Model.prepare_prompts`, `Model.encode`), in one batched tokenizer call."""
    return model.encode(model.prepare_prompts(render_tokens(model, prompt, tokens), chat, system))


_INIT_ALTERNATIVES = (" x", " !", " a", "x")


def build_prompt(model: "Model", template: str, behavior: str, init: str = " x", target: str | None = None,
                 chat: bool | None = None, system: System = DEFAULT_SYSTEM, key: str | None = None) -> AttackPrompt:
    """Token ids of `template` with `behavior` substituted, the masks filled with the token of `init`.

    The prompt must read back as the same ids when rendered to text, chat-formatted and encoded, the check
    every candidate goes through: otherwise (`init='!'`: adjacent masks read back as one `!!` token) every
    candidate that keeps an initial token would be dropped and the search would stall. Such a prompt is refused,
    with an init that does read back for this template and behaviour."""
    prompt = _assemble(model, template, behavior, init, target, chat, system, key)
    back = _reads_back(model, prompt, chat, system)
    if back is None:
        return prompt
    works = None
    for alt in _INIT_ALTERNATIVES:
        try:
            if alt != init and _reads_back(model, _assemble(model, template, behavior, alt, None, chat, system, key),
                                           chat, system) is None:
                works = alt
                break
        except InterpError:
            continue
    hint = f"use init={works!r}, which does here" if works else "use an init whose repeats stay one token each"
    raise InterpError(f"with every [MASK] set to {init!r} the prompt does not read back as the same tokens "
                      f"({back}), so every candidate would fail the retokenisation check; {hint}")


def _reads_back(model: "Model", prompt: AttackPrompt, chat: bool | None, system: System) -> str | None:
    """None when the prompt's initial tokens survive `reencode`; else where they first differ, as tokens."""
    init = torch.tensor([[prompt.ids[i] for i in prompt.mask_positions]])
    back = reencode(model, prompt, init, chat, system)[0]
    if back == prompt.ids:
        return None
    first = next((i for i, (a, b) in enumerate(zip(back, prompt.ids)) if a != b), min(len(back), len(prompt.ids)))
    window = slice(max(0, first - 2), first + 4)
    tokens = model.tokenizer.convert_ids_to_tokens
    return f"{tokens(prompt.ids[window])} reads back as {tokens(back[window])}"


def _assemble(model: "Model", template: str, behavior: str, init: str, target: str | None, chat: bool | None,
              system: System, key: str | None) -> AttackPrompt:
    """The prompt's ids built piece by piece around the masks (the special prefix by `Model.encode`'s rule)."""
    check_template(template)
    chat = model.uses_chat(chat)
    user = template.replace(BEHAVIOR, behavior)
    parts = user.split(MASK)
    text = model.format_chat(_SENTINEL.join(parts), system) if chat else _SENTINEL.join(parts)
    pieces = text.split(_SENTINEL)
    if len(pieces) != len(parts):
        raise InterpError("the chat template changed the mask markers; use a template whose masks sit inside the user message")
    tok = model.tokenizer
    init_ids = tok(init, add_special_tokens=False).input_ids
    if len(init_ids) != 1:
        raise InterpError(f"the initial mask text {init!r} is {len(init_ids)} tokens; give text that is exactly one token (e.g. ' x')")
    ids = model.encode([pieces[0]])[0]
    positions = []
    for piece in pieces[1:]:
        positions.append(len(ids))
        ids += init_ids + tok(piece, add_special_tokens=False).input_ids
    runs, texts, start = [], [parts[0]], 0
    for i in range(1, len(positions) + 1):  # a run ends where the next mask is not adjacent
        if i == len(positions) or positions[i] != positions[i - 1] + 1 or parts[i]:
            runs.append((start, i))
            texts.append(parts[i])
            start = i
    target_ids = tok(target, add_special_tokens=False).input_ids if target else []
    prompt = AttackPrompt(behavior, ids, positions, texts, runs, target_ids, key or behavior)
    if prompt.prefix_len == 0:
        raise InterpError("the prompt starts with a mask; put at least one fixed token (the chat template or text) before the first [MASK]")
    return prompt


@functools.lru_cache(maxsize=8)
def _disallowed(tokenizer, vocab: int, ascii_only: bool) -> Tensor:
    """Token ids never proposed: special and added tokens (chat-template and FIM markers), ids beyond the
    tokenizer, and (ascii_only) tokens that do not decode to printable ASCII text."""
    bad = torch.zeros(vocab, dtype=torch.bool)
    n = min(len(tokenizer), vocab)
    bad[n:] = True
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    bad[[i for i in special if i < vocab]] = True
    if ascii_only:
        texts = tokenizer.batch_decode([[i] for i in range(n)])
        bad[:n] |= torch.tensor([not (t.isascii() and t.isprintable() and t.strip()) for t in texts])
    return bad


# ----- the prefix cache and batched forwards -----

class Batcher:
    """Runs rows (behaviour index, mask tokens or embeddings) through the model with the prefix KV cache."""

    def __init__(self, model: "Model", prompts: list[AttackPrompt], loss: "AttackLoss", use_cache: bool = True):
        self.model, self.prompts, self.loss = model, prompts, loss
        self.embed = model.hf.get_input_embeddings()
        dev = model.device
        n = len(prompts)
        m = prompts[0].n_mask
        if any(p.n_mask != m for p in prompts):
            raise InterpError("all prompts of one search must have the same number of masks")
        if use_cache:  # exact only where no active intervention or sliding window tells the rows apart
            whole = [len(p.ids) + len(self._target(p)) for p in prompts]
            widest = max(p.prefix_len for p in prompts) + max(w - p.prefix_len for w, p in zip(whole, prompts))
            use_cache = usable(model, widest, min(w - p.prefix_len for w, p in zip(whole, prompts)))
        self.use_cache = use_cache
        self.prefix_lens = torch.tensor([p.prefix_len if use_cache else 0 for p in prompts], device=dev)
        suffixes = [p.ids[int(pl):] + self._target(p) for p, pl in zip(prompts, self.prefix_lens)]
        width = max(len(s) for s in suffixes)
        pad = model.pad_id
        if pad is None:
            raise InterpError(f"the tokenizer of {model.name} has neither a pad nor an EOS token; batches cannot be padded")
        self.suffix_ids = torch.full((n, width), pad, dtype=torch.long, device=dev)
        self.suffix_mask = torch.zeros((n, width), dtype=torch.long, device=dev)
        self.mask_cols = torch.zeros((n, m), dtype=torch.long, device=dev)
        for i, (p, s) in enumerate(zip(prompts, suffixes)):
            off = width - len(s)
            self.suffix_ids[i, off:] = torch.tensor(s, device=dev)
            self.suffix_mask[i, off:] = 1
            self.mask_cols[i] = torch.tensor(p.mask_positions, device=dev) - int(self.prefix_lens[i]) + off
        t = max(len(self._target(p)) for p in prompts)
        self.target_ids = torch.full((n, t), pad, dtype=torch.long, device=dev)
        self.target_mask = torch.zeros((n, t), dtype=torch.bool, device=dev)
        for i, p in enumerate(prompts):
            if self._target(p):
                self.target_ids[i, t - len(p.target_ids):] = torch.tensor(p.target_ids, device=dev)
                self.target_mask[i, t - len(p.target_ids):] = True
        self._kv: list[PrefixKV | None] = [None for _ in prompts]
        self.refs: dict[Site, Tensor] = {}  # the loss's reference sites on each unattacked prompt, [n, ...]

    def _target(self, prompt: AttackPrompt) -> list[int]:
        """The target tokens run after the prompt, only for losses that read them (GCG)."""
        return prompt.target_ids if self.loss.uses_target else []

    # -- prefix --
    @torch.no_grad()
    def add_prefixes(self, indices: Sequence[int]) -> None:
        """Compute and keep the prefix keys/values of these behaviours (one left-padded batch)."""
        todo = [i for i in indices if self._kv[i] is None and int(self.prefix_lens[i]) > 0]
        if not todo:
            return
        prefixes = PrefixKV.compute(self.model, [self.prompts[i].ids[:int(self.prefix_lens[i])] for i in todo],
                                    stop_layer=self.loss.stop_layer)
        for i, one in zip(todo, prefixes.split()):
            self._kv[i] = one

    def drop_prefixes(self, indices: Sequence[int]) -> None:
        for i in indices:
            self._kv[i] = None

    def _cache_for(self, rows: Tensor) -> tuple[DynamicCache | None, Tensor]:
        """A fresh cache holding the (left-padded) prefixes of `rows`, and its attention mask."""
        if int(self.prefix_lens[rows].max()) == 0:
            return None, torch.zeros((len(rows), 0), dtype=torch.long, device=self.model.device)
        uniq, inverse = torch.unique(rows, return_inverse=True)
        prefix = PrefixKV.cat([self._kv[i] for i in uniq.tolist()])
        return prefix.cache(inverse, self.loss.stop_layer), prefix.mask[inverse].to(self.model.device)

    # -- forward --
    def forward(self, rows: Int[Tensor, "r"], tokens: Int[Tensor, "r m"] | None = None,
                embeds: Float[Tensor, "r m d"] | None = None) -> Float[Tensor, "r"]:
        """The loss of each row: behaviour `rows[i]` with its masks set to `tokens[i]` (or `embeds[i]`)."""
        return self.loss(*self.run(rows, tokens, embeds))

    def run(self, rows: Int[Tensor, "r"], tokens: Int[Tensor, "r m"] | None = None,
            embeds: Float[Tensor, "r m d"] | None = None) -> tuple[dict, Tensor | None, "RowBatch"]:
        """One forward of these rows: what the loss reads at its sites, the kept logits (None when the forward
        stopped early) and the rows' bookkeeping. Row, token and embedding tensors may be on any device."""
        dev = self.model.device
        rows = rows.to(dev)
        tokens = tokens.to(dev) if tokens is not None else None
        embeds = embeds.to(dev) if embeds is not None else None
        ids = self.suffix_ids[rows]
        cols = self.mask_cols[rows]
        if tokens is not None:
            ids = ids.scatter(1, cols, tokens)
        x = self.embed(ids)
        if embeds is not None:
            x = x.scatter(1, cols[..., None].expand(-1, -1, x.shape[-1]), embeds.to(x.dtype))
        smask = self.suffix_mask[rows]
        cache, pmask = self._cache_for(rows)
        mask = torch.cat([pmask, smask], 1)
        position_ids = self.prefix_lens[rows, None] + (smask.cumsum(-1) - 1).clamp(min=0)
        loss = self.loss
        acts: dict = {}

        def keep(site, value):
            acts[site] = loss.read(site, value)

        out = forward(self.model, inputs_embeds=x, attention_mask=mask, position_ids=position_ids, cache=cache,
                  hooks={s: [keep] for s in loss.sites}, stop_after=loss.stop_layer, eager=loss.needs_pattern,
                  logits=loss.logits_to_keep(self.target_ids.shape[1]))
        batch = RowBatch(
            prompt=rows, mask_cols=cols + pmask.shape[1], target_ids=self.target_ids[rows],
            target_mask=self.target_mask[rows], refs={k: v[rows] for k, v in self.refs.items()},
        )
        return acts, out.logits, batch


def _is_oom(e: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(e, oom)) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


# ----- the search -----

PRESETS: dict[str, dict] = {
    # the toolkit's own budget (sized like the SSR paper's runs): 40 steps x 32 candidates, top-k 64, a buffer of
    # 4, judged when the loss crosses the loss's threshold or every 10 steps (search knobs; SSR and GCG alike)
    "default": {},
    # nanoGCG's GCGConfig defaults (github.com/GraySwanAI/nanoGCG): 250 steps, search width 512, top-k 256, one
    # token swapped per candidate, buffer_size 0 (each step starts from that step's best candidate, even when it
    # is worse than an earlier one), early_stop off (judged only at the end of the budget), ASCII tokens only.
    # Its 20 optimised tokens initialised "x x ... x" and the behaviour's "Sure, here is ..." target are prompt
    # settings: `interp.attacks.run.AttackConfig.build(preset="nanogcg")` sets them (PROMPT_PRESETS).
    "nanogcg": dict(steps=250, candidates=512, topk=256, n_replace=1, buffer_size=0, judge_every=0,
                    judge_below=-math.inf, ascii_only=True),
}


@dataclass
class EngineConfig:
    """Budget and knobs of the token search. Budget per behaviour = steps x candidates candidate forwards, or
    `max_forwards` when given. `preset` names the preset these knobs started from (`EngineConfig.preset_of`)."""

    steps: int = 40
    candidates: int = 32  # search width: candidates per behaviour per step
    topk: int = 64  # tokens considered per position, from the gradient
    n_replace: int | None = None  # positions changed per candidate; None: shrink from n_mask with the loss (SSR)
    replace_coefficient: float = 1.8  # n_replace = n_mask * (loss / initial loss) ** (1 / coefficient)
    buffer_size: int = 4  # 0: nanoGCG's, each step starts from that step's best candidate (best ever kept apart)
    patience: int = 8  # steps without improvement before a jump
    # behaviours attacked together (their candidate forwards and the judge's generations share batches)
    parallel: int = 4
    max_seconds: float | None = None  # wall-time cap per behaviour
    judge_every: int = 10  # judge the best candidate every k steps (when it changed); 0: never periodically
    judge_below: float | None = None  # judge as soon as the loss drops below this (default: the loss's threshold)
    batch_size: int = 512  # rows per forward (halved on out-of-memory)
    ascii_only: bool = True
    prefix_cache: bool = True
    seed: int = 0
    max_empty_steps: int = 5  # stop a behaviour after this many steps in a row keep no candidate
    max_forwards: int | None = None  # candidate rows evaluated per behaviour (gradient forwards not included)
    # judged attempts per behaviour: None, the preset's schedule (judged while searching, the judge stops the search,
    # every buffer entry judged at the end; N varies); N: no judging until the budget is spent, then the N
    # lowest-loss distinct suffixes are judged (the same N for every preset: compare methods at equal N)
    attempts: int | None = None
    preset: str = "default"  # the preset these knobs came from (recorded in logs)

    def __post_init__(self) -> None:
        for name in ("steps", "candidates", "topk", "patience", "parallel", "batch_size", "max_empty_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InterpError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.buffer_size, int) or isinstance(self.buffer_size, bool) or self.buffer_size < 0:
            raise InterpError(f"buffer_size must be a non-negative integer (0: nanoGCG's), got {self.buffer_size!r}")
        if self.max_forwards is not None and (not isinstance(self.max_forwards, int) or self.max_forwards < 1):
            raise InterpError(f"max_forwards must be a positive integer or None, got {self.max_forwards!r}")
        if self.preset not in PRESETS:
            raise InterpError(f"unknown search preset {self.preset!r}; use one of {', '.join(PRESETS)}")
        if self.n_replace is not None and (not isinstance(self.n_replace, int) or self.n_replace < 1):
            raise InterpError(f"n_replace must be a positive integer or None, got {self.n_replace!r}")
        if self.attempts is not None and (not isinstance(self.attempts, int) or isinstance(self.attempts, bool)
                                          or self.attempts < 1):
            raise InterpError(f"attempts must be a positive integer or None (the preset's schedule), got {self.attempts!r}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise InterpError(f"max_seconds must be positive, got {self.max_seconds!r}")
        if not isinstance(self.judge_every, int) or self.judge_every < 0:
            raise InterpError(f"judge_every must be a non-negative integer, got {self.judge_every!r}")

    @classmethod
    def preset_of(cls, name: str = "default", **overrides) -> "EngineConfig":
        """The knobs of preset `name` ("default" or "nanogcg", see PRESETS), then `overrides` (non-None ones)."""
        if name not in PRESETS:
            raise InterpError(f"unknown search preset {name!r}; use one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}, "preset": name})


@dataclass
class Candidate:
    """A candidate handed to the judge: the best tokens of one behaviour at one step."""

    index: int  # behaviour index in the prompt list
    prompt: AttackPrompt
    text: str  # the adversarial user message
    tokens: list[int]  # the mask tokens
    loss: float
    step: int
    started: float  # time.perf_counter() when this behaviour's search started
    final: bool  # the search of this behaviour ends with this candidate (or with the group judged with it)
    curve: list[float]  # best loss after each step so far
    entry: int = 0  # rank (by loss) among the entries judged together at the end of the budget; 0 = best loss
    entries: int = 1  # how many entries of this behaviour are judged together (final group), else 1
    forwards: int = 0  # candidate rows evaluated for this behaviour so far
    grad_forwards: int = 0  # gradient forwards (one row each) for this behaviour so far
    attempts: int = 1  # distinct suffixes of this behaviour judged so far, this one (or its final batch) included


@dataclass
class SearchResult:
    behavior: str
    key: str
    text: str  # best adversarial user message
    tokens: list[int]
    loss: float
    initial_loss: float
    steps: int
    seconds: float
    success: bool | None  # None when there is no judge
    curve: list[float]  # best loss after each step
    stop_reason: str | None = None  # why the search stopped early, other than success or its budget
    forwards: int = 0  # candidate rows evaluated
    grad_forwards: int = 0  # gradient forwards
    attempts: int = 0  # distinct suffixes judged (N of best-of-N)
    single_success: bool | None = None  # the best-loss suffix at the end of the search, judged once
    stopped_by_judge: bool = False  # a judged success stopped the search before its budget (single_success not exact)


Check = Callable[[list[Candidate]], list[bool]]


@dataclass
class _State:
    index: int
    gen: torch.Generator
    buffer_ids: Tensor
    buffer_losses: Tensor
    best_ids: Tensor
    best_loss: float
    initial_loss: float
    started: float
    n_replace: int
    step: int = 0
    since_improvement: int = 0
    last_judged: str | None = None
    curve: list[float] = field(default_factory=list)
    success: bool | None = None
    empty_steps: int = 0  # consecutive steps that kept no candidate
    stop_reason: str | None = None
    forwards: int = 0  # candidate rows evaluated
    grad_forwards: int = 0
    winner: tuple[Tensor, float] | None = None  # the entry judged a success (tokens, loss)
    judged: set = field(default_factory=set)  # distinct suffix texts judged
    single_success: bool | None = None  # the verdict of the best-loss suffix of the final batch (entry 0)
    stopped_by_judge: bool = False
    pool_ids: Tensor | None = None  # attempts=N: the N lowest-loss distinct suffixes evaluated so far (CPU)
    pool_losses: Tensor | None = None


class TokenSearch:
    """Gradient-guided token search over the masks of many prompts at once, for any `AttackLoss`."""

    def __init__(self, model: "Model", loss: "AttackLoss", config: EngineConfig | None = None):
        self.model, self.loss = model, loss
        self.config = config or EngineConfig()
        self.batch_size = self.config.batch_size
        vocab = model.hf.get_input_embeddings().weight.shape[0]
        self.disallowed = _disallowed(model.tokenizer, vocab, self.config.ascii_only).to(model.device)

    # -- pieces, public for tests --
    def token_gradients(self, batcher: Batcher, rows: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Loss [r] and d loss / d one-hot [r, m, vocab] at each row's masks."""
        weight = batcher.embed.weight
        rows, tokens = rows.to(weight.device), tokens.to(weight.device)  # the caller's may be on another device
        losses, grads = [], []
        for chunk in self._chunks(len(rows)):
            with torch.enable_grad():
                e = batcher.embed(tokens[chunk]).detach().requires_grad_(True)
                loss = batcher.forward(rows[chunk], embeds=e)
                (g,) = torch.autograd.grad(loss.sum(), e)
            losses.append(loss.detach())
            grads.append(g @ weight.detach().T)
        return torch.cat(losses).float(), torch.cat(grads).float()

    def sample(self, best: Int[Tensor, "m"], grad: Float[Tensor, "m vocab"], n_replace: int,
               gen: torch.Generator) -> Int[Tensor, "c m"]:
        """Candidates: `n_replace` random positions of `best` set to random top-k tokens of -grad."""
        c, m = self.config.candidates, best.shape[0]
        g = grad.masked_fill(self.disallowed.to(grad.device)[None], float("inf"))
        top = (-g).topk(self.config.topk, dim=-1).indices.cpu()  # [m, k]
        pos = torch.rand((c, m), generator=gen).argsort(-1)[:, :n_replace]  # [c, n]
        pick = torch.randint(0, self.config.topk, (c, n_replace), generator=gen)
        values = top[pos, pick]
        out = best.cpu().repeat(c, 1).scatter(1, pos, values)
        out = torch.unique(out, dim=0)
        return out[(out != best.cpu()).any(-1)].to(best.device)

    def render(self, prompt: AttackPrompt, tokens: Tensor) -> list[str]:
        """The user messages of candidate tokens [c, m] of one prompt."""
        return render_tokens(self.model, prompt, tokens)

    def retokenizes(self, prompt: AttackPrompt, tokens: Tensor, chat: bool | None = None,
                    system: System = DEFAULT_SYSTEM) -> Bool[Tensor, "c"]:
        """Whether each candidate's text encodes back to exactly its ids (one batched tokenizer call)."""
        if len(tokens) == 0:
            return torch.zeros(0, dtype=torch.bool)
        encoded = reencode(self.model, prompt, tokens, chat, system)
        expected = torch.tensor(prompt.ids).repeat(len(tokens), 1)
        expected[:, prompt.mask_positions] = tokens.cpu()
        want = expected.tolist()
        return torch.tensor([e == w for e, w in zip(encoded, want)], dtype=torch.bool)

    def evaluate(self, batcher: Batcher, rows: Tensor, tokens: Tensor) -> Tensor:
        """Losses of many (behaviour, tokens) rows, in chunks of `batch_size` rows."""
        with torch.no_grad():
            return torch.cat([batcher.forward(rows[c], tokens=tokens[c]).float() for c in self._chunks(len(rows))])

    def _chunks(self, n: int) -> list[slice]:
        """Slices of at most `batch_size` rows (`_oom_retry` halves the size and runs the whole call again)."""
        return [slice(start, start + self.batch_size) for start in range(0, n, self.batch_size)]

    # -- the loop --
    def run(self, prompts: list[AttackPrompt], check: Check | None = None, progress: bool = True,
            chat: bool | None = None, system: System = DEFAULT_SYSTEM) -> list[SearchResult]:
        """Search every prompt, `parallel` at a time. `check(candidates) -> successes` judges candidates (and
        logs them); without it a behaviour stops when its loss reaches the threshold (`success` is then None)."""
        cfg = self.config
        if not prompts:
            raise InterpError("no prompts to attack")
        batcher = Batcher(self.model, prompts, self.loss, use_cache=cfg.prefix_cache)
        queue, results = list(range(len(prompts))), {}
        active: list[_State] = []
        bar = tqdm(total=len(prompts) * cfg.steps, desc=f"attack ({self.loss.name})", unit="step", disable=not progress)
        try:
            while queue or active:
                joining, queue = queue[:cfg.parallel - len(active)], queue[cfg.parallel - len(active):]
                active += self._join(batcher, joining)
                self._step(batcher, active, chat, system)
                bar.update(len(active))
                for s in self._finished(prompts, active, check):
                    results[s.index] = self._result(prompts[s.index], s)
                    bar.update(cfg.steps - s.step)
                    active.remove(s)
                    batcher.drop_prefixes([s.index])
                if active:
                    bar.set_postfix(best_loss=f"{min(s.best_loss for s in active):.3f}",
                                    done=len(results), success=sum(bool(r.success) for r in results.values()))
        finally:
            bar.close()
        return [results[i] for i in range(len(prompts))]

    def _join(self, batcher: Batcher, indices: list[int]) -> list[_State]:
        """Start behaviours: their prefix caches, loss references, and a search state each."""
        if not indices:
            return []
        self._oom_retry(lambda: batcher.add_prefixes(indices))
        self._oom_retry(lambda: self._references(batcher, indices))
        states = []
        for i in indices:
            p = batcher.prompts[i]
            gen = torch.Generator().manual_seed(self.config.seed + zlib.crc32(p.key.encode()))
            ids = torch.tensor([p.ids[j] for j in p.mask_positions], device=self.model.device)
            states.append(_State(i, gen, ids[None], torch.tensor([math.inf]), ids, math.inf, math.inf,
                                 time.perf_counter(), self.config.n_replace or p.n_mask))
        return states

    def _step(self, batcher: Batcher, active: list[_State], chat: bool | None, system: System) -> None:
        """One step for every active behaviour: gradients, candidates, their losses, buffer updates."""
        dev = self.model.device
        rows = torch.tensor([s.index for s in active], device=dev)
        best = torch.stack([s.buffer_ids[0] for s in active])
        losses, grads = self._oom_retry(lambda: self.token_gradients(batcher, rows, best))
        cand_rows, cand_ids = [], []
        for k, s in enumerate(active):
            if s.initial_loss == math.inf:  # first step: the loss of the initial tokens
                s.initial_loss = s.best_loss = float(losses[k])
                s.buffer_losses = losses[k:k + 1].cpu()
            s.grad_forwards += 1
            cand = self.sample(s.buffer_ids[0], grads[k], s.n_replace, s.gen)
            cand = cand[self.retokenizes(batcher.prompts[s.index], cand, chat, system).to(cand.device)]
            if self.config.max_forwards is not None:  # the last step is cut so that the budget holds exactly
                cand = cand[:max(0, self.config.max_forwards - s.forwards)]
            s.forwards += len(cand)
            self._count_empty(s, batcher.prompts[s.index], len(cand))
            cand_rows.append(torch.full((len(cand),), s.index, device=dev))
            cand_ids.append(cand)
        all_rows, all_ids = torch.cat(cand_rows), torch.cat(cand_ids)
        all_losses = self._oom_retry(lambda: self.evaluate(batcher, all_rows, all_ids)) if len(all_rows) else torch.zeros(0)
        start = 0
        for s, ids in zip(active, cand_ids):
            self._update(s, ids, all_losses[start:start + len(ids)].cpu())
            start += len(ids)
            s.step += 1
            s.curve.append(s.best_loss)

    def _count_empty(self, s: _State, prompt: AttackPrompt, kept: int) -> None:
        """Count steps in a row that keep no candidate; after `max_empty_steps` stop the behaviour, with a warning
        (a search that cannot propose a token sequence which survives retokenisation would only burn its budget)."""
        s.empty_steps = 0 if kept else s.empty_steps + 1
        if s.empty_steps == self.config.max_empty_steps:
            s.stop_reason = (f"no candidate survived the retokenisation check for {s.empty_steps} steps in a row "
                             f"(step {s.step + 1}); stopped")
            warnings.warn(f"attack on {prompt.key!r}: {s.stop_reason}", stacklevel=2)

    def _over(self, s: _State) -> bool:
        """Whether a behaviour has spent its budget: steps, forwards, wall time, or stopped for a reason."""
        cfg = self.config
        return (s.step >= cfg.steps or s.stop_reason is not None
                or (cfg.max_forwards is not None and s.forwards >= cfg.max_forwards)
                or (cfg.max_seconds is not None and time.perf_counter() - s.started >= cfg.max_seconds))

    def _closing(self, prompt: AttackPrompt, s: _State) -> list[Candidate]:
        """The candidates judged at the end of a behaviour's budget, by loss (entry 0: the best-loss tokens). The
        preset's schedule (`attempts=None`): the best-loss tokens and every distinct buffer entry (nanoGCG's
        buffer_size 0 keeps the last step's best beside the best ever). `attempts=N`: the N lowest-loss distinct
        suffixes the search evaluated."""
        pool = [(s.best_loss, s.best_ids.cpu())] + [(l, i.cpu()) for l, i in zip(s.buffer_losses.tolist(), s.buffer_ids)]
        if s.pool_ids is not None and s.pool_losses is not None:
            pool += list(zip(s.pool_losses.tolist(), s.pool_ids))
        seen, kept = set(), []
        for loss, ids in sorted(pool, key=lambda x: x[0]):
            key = tuple(ids.tolist())
            if key not in seen and math.isfinite(loss):
                seen.add(key)
                kept.append((loss, ids))
        if not kept:  # stopped before any loss was computed: the initial tokens
            kept = [(s.best_loss, s.best_ids.cpu())]
        if self.config.attempts is not None:
            kept = kept[:self.config.attempts]
        texts = self.render(prompt, torch.stack([ids for _, ids in kept]))
        attempts = len(s.judged | set(texts))
        return [Candidate(s.index, prompt, text, ids.tolist(), loss, s.step, s.started, True, list(s.curve), k,
                          len(kept), s.forwards, s.grad_forwards, attempts)
                for k, (text, (loss, ids)) in enumerate(zip(texts, kept))]

    def _finished(self, prompts: list[AttackPrompt], active: list[_State], check: Check | None) -> list[_State]:
        """Judge the candidates that are due; return the behaviours that are done (success or out of budget).
        A behaviour out of budget has its final batch (`_closing`) judged in the same batch as the rest. With
        `attempts` set nothing is judged before the budget is spent, so the judge never stops a search."""
        cfg = self.config
        below = cfg.judge_below if cfg.judge_below is not None else self.loss.threshold
        done, to_check = [], []
        for s in active:
            over = self._over(s)
            if check is None:
                if s.best_loss <= below or over:
                    done.append(s)
                continue
            if over:
                to_check += [(s, c) for c in self._closing(prompts[s.index], s)]
                continue
            if cfg.attempts is not None:
                continue
            text = self.render(prompts[s.index], s.best_ids[None])[0]
            due = text != s.last_judged and (s.best_loss <= below or (cfg.judge_every and s.step % cfg.judge_every == 0))
            if due:
                to_check.append((s, Candidate(s.index, prompts[s.index], text, s.best_ids.tolist(), s.best_loss, s.step,
                                              s.started, False, list(s.curve), 0, 1, s.forwards, s.grad_forwards,
                                              len(s.judged | {text}))))
                s.last_judged = text
        if to_check:
            assert check is not None  # without a check nothing is queued for judging
            closing: dict[int, _State] = {}
            for (s, cand), ok in zip(to_check, check([c for _, c in to_check])):
                s.judged.add(cand.text)
                if ok and s.winner is None:
                    s.success = True
                    s.winner = (torch.tensor(cand.tokens), cand.loss)
                if cand.final:
                    closing[s.index] = s
                    if cand.entry == 0:  # the best-loss suffix at the end of the search: the single attempt
                        s.single_success = bool(ok)
                elif ok:  # a judged success stops the search: the suffix judged at the stop stands in
                    s.single_success, s.stopped_by_judge = True, True
            for s in active:
                if s.success or s.index in closing:
                    s.success = bool(s.success)
                    done.append(s)
        return done

    def _references(self, batcher: Batcher, indices: Sequence[int]) -> None:
        """Read the loss's `reference_sites` on the unattacked prompts (masks at their initial tokens), once per
        behaviour, and keep them for `RowBatch.refs`. The same forward and `read` as every candidate's."""
        sites = self.loss.reference_sites
        if not sites:
            return
        missing = [s.name for s in sites if s not in self.loss.sites]
        if missing:
            raise InterpError(f"the {self.loss.name} loss asks for references at {missing}, which it does not read; "
                              f"reference sites must be among its sites {[s.name for s in self.loss.sites]}")
        rows = torch.tensor(list(indices), device=self.model.device)
        tokens = torch.stack([torch.tensor([batcher.prompts[i].ids[p] for p in batcher.prompts[i].mask_positions])
                              for i in indices]).to(self.model.device)
        n = len(batcher.prompts)
        for start in range(0, len(rows), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            with torch.no_grad():
                acts, _, _ = batcher.run(rows[chunk], tokens=tokens[chunk])
            for site in sites:
                value = acts[site]
                if site not in batcher.refs:
                    batcher.refs[site] = value.new_zeros((n, *value.shape[1:]))
                batcher.refs[site][rows[chunk]] = value

    def _update(self, s: _State, ids: Tensor, losses: Tensor) -> None:
        """Merge candidates into the buffer, track the best ever, shrink n_replace, jump after `patience`."""
        cfg = self.config
        if cfg.buffer_size == 0 and len(ids):  # nanoGCG: the next step starts from this step's best, better or not
            pool_ids, pool_losses = ids.cpu(), losses
        else:
            pool_ids = torch.cat([s.buffer_ids.cpu(), ids.cpu()])
            pool_losses = torch.cat([s.buffer_losses, losses])
        size = max(1, cfg.buffer_size)
        order = pool_losses.argsort()
        keep_ids, keep_losses, seen = [], [], set()
        for i in order.tolist():
            key = tuple(pool_ids[i].tolist())
            if key in seen or not math.isfinite(float(pool_losses[i])):
                continue
            seen.add(key)
            keep_ids.append(pool_ids[i])
            keep_losses.append(pool_losses[i])
            if len(keep_ids) == size:
                break
        dev = s.buffer_ids.device
        if cfg.attempts is not None:  # the N lowest-loss distinct suffixes evaluated, apart from the search buffer
            self._keep_pool(s, pool_ids, pool_losses)
        s.buffer_ids = torch.stack(keep_ids).to(dev)
        s.buffer_losses = torch.stack(keep_losses)
        if float(s.buffer_losses[0]) < s.best_loss - 1e-9:
            s.best_loss, s.best_ids = float(s.buffer_losses[0]), s.buffer_ids[0].clone()
            s.since_improvement = 0
        else:
            s.since_improvement += 1
        if cfg.n_replace is None:
            ratio = min(1.0, max(0.0, float(s.buffer_losses[0]) / (s.initial_loss + 1e-9))) if s.initial_loss > 0 else 0.0
            s.n_replace = max(1, int(ratio ** (1 / cfg.replace_coefficient) * s.best_ids.shape[0]))
        if s.since_improvement > cfg.patience and len(s.buffer_losses) > 1:
            weights = torch.softmax(-(s.buffer_losses[1:] - s.buffer_losses[1:].min()), 0)
            jump = 1 + int(torch.multinomial(weights, 1, generator=s.gen))
            s.buffer_ids, s.buffer_losses = s.buffer_ids[jump:], s.buffer_losses[jump:]
            s.since_improvement = 0

    def _keep_pool(self, s: _State, ids: Tensor, losses: Tensor) -> None:
        """Merge evaluated suffixes (and the buffer they came from) into the pool of the `attempts` lowest-loss
        distinct ones, judged at the end of the budget."""
        n = self.config.attempts
        assert n is not None
        parts_ids = [ids.cpu(), s.buffer_ids.cpu()] + ([s.pool_ids] if s.pool_ids is not None else [])
        parts_losses = [losses.float(), s.buffer_losses.float()] + ([s.pool_losses] if s.pool_losses is not None else [])
        all_ids, all_losses = torch.cat(parts_ids), torch.cat(parts_losses)
        keep, seen = [], set()
        for i in all_losses.argsort(stable=True).tolist():
            key = tuple(all_ids[i].tolist())
            if key in seen or not math.isfinite(float(all_losses[i])):
                continue
            seen.add(key)
            keep.append(i)
            if len(keep) == n:
                break
        if keep:
            s.pool_ids, s.pool_losses = all_ids[keep], all_losses[keep]

    def _result(self, prompt: AttackPrompt, s: _State) -> SearchResult:
        """The outcome: the entry judged a success, else the best-loss tokens."""
        ids, loss = s.winner if s.winner is not None else (s.best_ids, s.best_loss)
        text = self.render(prompt, ids[None])[0]
        return SearchResult(prompt.behavior, prompt.key, text, ids.tolist(), loss, s.initial_loss, s.step,
                            time.perf_counter() - s.started, s.success, list(s.curve), s.stop_reason, s.forwards,
                            s.grad_forwards, len(s.judged), s.single_success, s.stopped_by_judge)

    def _oom_retry(self, fn: Callable):
        """Run fn; on out-of-memory halve the batch size and run it again (down to one row)."""
        while True:
            try:
                return fn()
            except Exception as e:  # noqa: BLE001 - only out-of-memory is handled
                if not _is_oom(e) or self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                warnings.warn(f"out of memory: retrying with {self.batch_size} rows per forward", stacklevel=2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
