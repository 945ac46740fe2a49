"""Tasks for circuit analysis: clean and corrupted prompt pairs with a correct and a wrong one-token answer.

A circuit analysis asks which parts of the model carry the difference between two runs. Each `TaskItem` is one
such pair: a clean prompt the model answers correctly, a corrupted prompt of the *same token length* (so every
position of one run lines up with the same position of the other, which patching needs), the answer (the
token the clean prompt should continue with) and the wrong answer (the competitor). The metric is the logit
difference `logit[answer] - logit[wrong]` at the last position, normalised so that the clean run scores 1 and
the corrupted run 0 (`normalise`): a patch that restores the clean value scores 1, one that does nothing 0.

Three generators, all from word lists written here (names, items, countries and capitals that are one token
with a leading space in both bundled tokenizers, SmolLM2's and Qwen2's; `TaskSet.tokens` checks it for any
model):

- "ioi": indirect object identification (Wang et al. 2022, "Interpretability in the Wild: a Circuit for
  Indirect Object Identification in GPT-2 small"). "When Mary and John went to the store, John gave a drink
  to" -> " Mary" (the indirect object, IO), wrong " John" (the repeated subject, S). Templates in both name
  orders (ABBA: IO first, BABA: S first). Corruption `corrupt="abc"` (default, the paper's ABC distribution):
  all three names replaced by three other names, so nothing says which name is the answer;
  `corrupt="swap"`: the repeated name is the IO instead of S, so the answer flips to S.
- "laundry": the Laundry List task of Merullo, Eickhoff and Pavlick 2024 ("Talking Heads: Understanding
  Inter-layer Communication in Transformer Language Models"), IOI generalised to a list of `length` items:
  "Anna went to the store and bought milk, soap and eggs. At home, she put away the soap, the eggs and the"
  -> " milk". All items but one are mentioned again; the answer is the one not mentioned, the wrong answer
  one that was. The inhibition mechanism that suppresses already-mentioned names has limited capacity, so
  accuracy (`accuracy`: the answer beats every item of the list, `meta["choices"]`) falls as the list grows.
  Corruption: the answer is mentioned in place of the wrong item, so the answer flips. `meta["length"]`
  records the list length.
- "capitals": country -> capital factual recall, "The capital of France is" -> " Paris"; the corrupted
  prompt names another country, whose capital is the wrong answer.

Interchange pairs of a causal variable (for DAS, `interp.circuits.das`): `make_task("ioi", corrupt="position")` gives
the pairs of Makelov et al. 2024 (code: github.com/amakelov/activation-patching-illusion, `data_utils.py`,
`PromptDistribution.sample_das` with `labels="position"`). The variable is the position of the subject in the
first clause (ABB: "When Mary and John ..., John ..." has S second; BAB: "When John and Mary ..., John ..." has it
first). The base prompt (`corrupted`) is ABB or BAB; the source prompt (`clean`) has the same names, place,
object and template in either pattern. When the patterns differ the label changes: patching the source's value
into the base moves the answer from the base's IO to its S (`answer` = the base's S, `wrong` = its IO); when they
agree the label is kept (`answer` = the base's IO). `kinds="both"` (default) cycles through the four
combinations (both directions of the change, both patterns kept); `kinds="changing"` gives the two changing
ones. A kept-label pair's source is the base prompt itself (`preserve="same"`, as the reference's `sample_das`
builds it from an equal pattern, so such a pair adds to the loss but gives the subspace no gradient) or the same
pattern with two new names (`preserve="names"`, the reference's "CDD" source patterns). Each such item also names
its `target`: the prompt whose own run answers as a full transfer of the variable should (the base with its S
repeated in the other clause position when the label changes, the base itself when it does not); recovery is
normalised against it. `meta["variable"]` holds each item's (source, base) values ("ABB"/"BAB").

Disjoint test distributions (the reference's `train_distribution` / `test_distribution`): every task's word lists
and templates are split in two (`vocabulary(task, part)`: the first half of the names, places and objects and of
IOI_TEMPLATES for "train", the second half for "test"; the capitals and their templates likewise; the Laundry
List's items and shoppers, its one template shared). `make_task(..., vocab="train")` draws only from one part;
`make_task(..., test=0.25)` draws that share of the items from the test part and the rest from the train part
and marks each item in `meta["part"]`. On the position task the test part holds label-changing pairs only (both
directions), as the reference's test set does.

Prompts are plain-text continuations (no chat template) unless `chat=True`. `solve_rate` reports how often
a model solves a task (the share of clean prompts with a positive logit difference), `solvable` keeps only the
items a model solves and refuses a task it cannot, and `report` measures every task (and list length) at once.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.errors import InterpError
from interp.io import jsonl_lines

if TYPE_CHECKING:
    from interp.core.model import Model

# ----- word lists: each word is one token with a leading space in the SmolLM2 and Qwen2 tokenizers -----

NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Paul", "Kate", "Sarah", "Mike", "Anna",
    "Lisa", "David", "Michael", "Robert", "William", "Richard", "Joseph", "Thomas", "Charles", "Daniel", "Mark",
    "Andrew", "Kevin", "Brian", "George", "Edward", "Ryan", "Jacob", "Eric", "Scott", "Frank", "Patrick", "Jack",
    "Peter", "Henry", "Adam", "Nathan", "Carl", "Sean", "Alan", "Roger", "Tim", "Bill", "Joe", "Ben", "Sam",
    "Max", "Alex", "Chris", "Jessica", "Jennifer", "Emily", "Laura", "Emma", "Rachel", "Helen", "Alice", "Linda",
    "Susan", "Karen", "Nancy", "Sandra", "Michelle", "Carol", "Amanda", "Rebecca", "Ruth", "Julie", "Maria",
    "Jane", "Grace", "Rose", "Lucy", "Sophie", "Claire", "Diana", "Victoria", "Tony", "Leo", "Oscar", "Louis",
)
PLACES: tuple[str, ...] = ("store", "garden", "restaurant", "school", "hospital", "office", "station", "park",
                           "market", "library", "beach", "house")
OBJECTS: tuple[str, ...] = ("drink", "ring", "book", "ball", "letter", "gift", "bag", "snack", "computer",
                            "necklace", "basket", "cake")
# {A} and {B} are the two names of the first clause, {S} the repeated subject; every name follows a space.
IOI_TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the {place}, {S} gave a {object} to",
    "When {A} and {B} got a {object} at the {place}, {S} decided to give it to",
    "After {A} and {B} went to the {place}, {S} gave a {object} to",
    "Then, {A} and {B} went to the {place}. {S} gave a {object} to",
    "While {A} and {B} were working at the {place}, {S} gave a {object} to",
    "Friends {A} and {B} found a {object} at the {place}. {S} gave it to",
    "Then, {A} and {B} had a long argument, and afterwards {S} said to",
    "When {A} and {B} arrived at the {place}, {S} handed the {object} to",
)
ITEMS: tuple[str, ...] = (
    "milk", "bread", "eggs", "soap", "apples", "rice", "cheese", "butter", "coffee", "tea", "sugar", "salt",
    "flour", "honey", "juice", "beans", "pasta", "onions", "carrots", "potatoes", "tomatoes", "bananas",
    "oranges", "candles", "batteries", "shampoo", "towels", "socks", "gloves", "pens", "paper", "nails", "wine",
    "beer", "chicken", "fish", "cookies", "cake", "chocolate", "yogurt", "cereal", "vinegar", "garlic",
    "lettuce", "grapes", "shirts", "shoes", "hats", "books", "toys", "cups", "plates", "forks", "knives",
    "bowls", "lamps", "blankets", "pillows", "jeans", "boots", "keys", "tools", "paint", "tape", "glue", "rope",
    "flowers", "seeds",
)
SHOPPERS: tuple[tuple[str, str], ...] = (("Anna", "she"), ("Mary", "she"), ("Lisa", "she"), ("Kate", "she"),
                                         ("John", "he"), ("Tom", "he"), ("Paul", "he"), ("David", "he"))
CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("Greece", "Athens"), ("Portugal", "Lisbon"),
    ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Canada", "Ottawa"), ("Poland", "Warsaw"),
    ("Sweden", "Stockholm"), ("Norway", "Oslo"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
    ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Cuba", "Havana"), ("Australia", "Canberra"), ("Belgium", "Brussels"), ("Hungary", "Budapest"),
    ("Syria", "Damascus"), ("Switzerland", "Bern"), ("England", "London"), ("Scotland", "Edinburgh"),
    ("Wales", "Cardiff"), ("Afghanistan", "Kabul"), ("Bulgaria", "Sofia"), ("Argentina", "Buenos"),
)
CAPITAL_TEMPLATES: tuple[str, ...] = ("The capital of {country} is", "The capital city of {country} is",
                                      "The name of the capital of {country} is")

TASKS: tuple[str, ...] = ("ioi", "laundry", "capitals")
PAIR_FIELDS: tuple[str, ...] = ("clean", "corrupted", "answer", "wrong_answer")
OPTIONAL_PAIR_FIELDS: tuple[str, ...] = ("target", "part")  # a pairs file may give these on every line
PARTS: tuple[str, ...] = ("all", "train", "test")
PER_ITEM: tuple[str, ...] = ("choices", "part", "variable")  # meta lists with one entry per item


def _halves(words: Sequence, part: str) -> tuple:
    half = len(words) // 2
    return tuple(words) if part == "all" else tuple(words[:half] if part == "train" else words[half:])


def vocabulary(task: str, part: str = "all") -> dict[str, tuple]:
    """The word lists and templates task `task` draws from: all of them, or the "train" or "test" part (disjoint
    halves; module docstring). The Laundry List has one template, which both parts share."""
    if part not in PARTS:
        raise InterpError(f"vocabulary part {part!r}; choose one of {', '.join(PARTS)}")
    if task == "ioi":
        return {"names": _halves(NAMES, part), "places": _halves(PLACES, part), "objects": _halves(OBJECTS, part),
                "templates": _halves(IOI_TEMPLATES, part)}
    if task == "laundry":  # shoppers interleaved, so both parts have both pronouns
        shoppers = SHOPPERS if part == "all" else SHOPPERS[::2] if part == "train" else SHOPPERS[1::2]
        return {"items": _halves(ITEMS, part), "shoppers": tuple(shoppers)}
    if task == "capitals":
        templates = CAPITAL_TEMPLATES if part == "all" else CAPITAL_TEMPLATES[:2] if part == "train" \
            else CAPITAL_TEMPLATES[2:]
        return {"capitals": _halves(CAPITALS, part), "templates": tuple(templates)}
    raise InterpError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


SHARED: dict[str, tuple[str, ...]] = {"ioi": (), "laundry": ("template",), "capitals": ()}  # what the parts share


# ----- the data types -----

@dataclass(frozen=True)
class TaskItem:
    """One clean/corrupted pair; answers are the strings the model should continue with (" Mary").

    target: the prompt whose own run answers as the patched run should (its logit difference answer - wrong is
    a patch's full recovery); None means the clean prompt. A pair whose label does not change names its corrupted
    prompt (`changes` is False)."""

    clean: str
    corrupted: str
    answer: str
    wrong: str
    target: str | None = None

    @property
    def changes(self) -> bool:
        """Whether patching the clean run into the corrupted one should change the answer."""
        return self.target is None or self.target != self.corrupted


@dataclass
class TaskTokens:
    """A task's token ids, checked: clean[i] and corrupted[i] (and target[i]) have the same length, answers are
    one token. target: the target prompts' ids where the items name them (`TaskItem.target`), else None."""

    clean: list[list[int]]
    corrupted: list[list[int]]
    answer: Int[Tensor, "n"]
    wrong: Int[Tensor, "n"]
    target: list[list[int]] | None = None

    @property
    def changes(self) -> list[bool]:
        """Per item: whether its label changes (its target is not its corrupted prompt)."""
        if self.target is None:
            return [True] * len(self.clean)
        return [t != c for t, c in zip(self.target, self.corrupted)]

    def __len__(self) -> int:
        return len(self.clean)


@dataclass
class TaskSet:
    """A named list of `TaskItem`s; `chat=True` puts each prompt in the model's chat template."""

    name: str
    items: list[TaskItem]
    chat: bool = False
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def clean(self) -> list[str]:
        return [item.clean for item in self.items]

    @property
    def corrupted(self) -> list[str]:
        return [item.corrupted for item in self.items]

    @property
    def targets(self) -> list[str]:
        """Per item, the prompt whose run a full patch should match (`TaskItem.target`, else the clean prompt)."""
        return [item.clean if item.target is None else item.target for item in self.items]

    @property
    def parts(self) -> list[str] | None:
        """Per item, "train" or "test" (`make_task(..., test=...)`, or a pairs file's `part`); None without parts."""
        parts = self.meta.get("part")
        return None if parts is None else list(parts)

    def subset(self, keep: Sequence[int]) -> "TaskSet":
        """The items at the indices `keep`, same name, chat flag and meta (per-item lists, `PER_ITEM`, follow the
        items)."""
        meta = dict(self.meta)
        for key in PER_ITEM:
            if key in meta:
                meta[key] = [meta[key][i] for i in keep]
        return replace(self, items=[self.items[i] for i in keep], meta=meta)

    def tokens(self, model: "Model") -> TaskTokens:
        """Token ids by the model's one encoding rule (`Model.encode`), checked so patching can line positions up.

        Raises InterpError naming the first offending item when a clean and a corrupted prompt differ in token
        length, or when an answer is not exactly one token, or when answer and wrong answer are the same token.
        """
        if not self.items:
            raise InterpError(f"task {self.name!r} has no items; give at least one clean/corrupted pair")
        clean = model.encode(model.prepare_prompts(self.clean, chat=self.chat))
        corrupted = model.encode(model.prepare_prompts(self.corrupted, chat=self.chat))
        for i, (item, a, b) in enumerate(zip(self.items, clean, corrupted)):
            if len(a) != len(b):
                raise InterpError(
                    f"task {self.name!r} item {i}: the clean prompt is {len(a)} tokens and the corrupted one {len(b)} "
                    f"with {model.name}'s tokenizer ({item.clean!r} vs {item.corrupted!r}); patching needs pairs of "
                    f"the same token length")
        target = None
        if any(item.target is not None for item in self.items):
            target = model.encode(model.prepare_prompts(self.targets, chat=self.chat))
            for i, (item, t, b) in enumerate(zip(self.items, target, corrupted)):
                if len(t) != len(b):
                    raise InterpError(f"task {self.name!r} item {i}: the target prompt is {len(t)} tokens and the "
                                      f"corrupted one {len(b)} ({item.target!r}); give a target of the same length")
        answer = [_one_token(model, item.answer, self.name, i, "answer") for i, item in enumerate(self.items)]
        wrong = [_one_token(model, item.wrong, self.name, i, "wrong answer") for i, item in enumerate(self.items)]
        for i, (a_id, w_id) in enumerate(zip(answer, wrong)):
            if a_id == w_id:
                raise InterpError(f"task {self.name!r} item {i}: answer {self.items[i].answer!r} and wrong answer "
                                  f"{self.items[i].wrong!r} are the same token; give two different answers")
        return TaskTokens(clean, corrupted, torch.tensor(answer), torch.tensor(wrong), target)


def _one_token(model: "Model", text: str, task: str, index: int, what: str) -> int:
    ids = model.tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) != 1:
        pieces = model.tokenizer.convert_ids_to_tokens(ids)
        raise InterpError(f"task {task!r} item {index}: the {what} {text!r} is {len(ids)} tokens {pieces} with "
                          f"{model.name}'s tokenizer; answers must be one token (mind the leading space: ' Mary')")
    return ids[0]


# ----- the metric -----

def logit_diff(logits: Float[Tensor, "... n vocab"], answer: Int[Tensor, "n"],
               wrong: Int[Tensor, "n"]) -> Float[Tensor, "... n"]:
    """`logits[answer] - logits[wrong]` per row (leading dims, such as patch locations, are kept)."""
    if logits.shape[-2] != len(answer) or len(answer) != len(wrong):
        raise InterpError(f"logit_diff: logits have {logits.shape[-2]} rows but there are {len(answer)} answers and "
                          f"{len(wrong)} wrong answers; give one answer and one wrong answer per row")
    index = torch.stack([answer, wrong], -1).to(logits.device).expand(*logits.shape[:-1], 2)
    picked = logits.gather(-1, index)
    return picked[..., 0] - picked[..., 1]


def normalise(value, clean, corrupted):
    """`(value - corrupted) / (clean - corrupted)`: the clean run scores 1, the corrupted run 0 (floats or tensors)."""
    gap = clean - corrupted
    tiny = (torch.as_tensor(gap).abs() < 1e-8).any()
    if bool(tiny):
        raise InterpError("normalise: the clean and corrupted metrics are equal, so there is nothing to restore; "
                          "use a task (or corruption) where the two runs differ")
    return (value - corrupted) / gap


@torch.no_grad()
def logit_diffs(model: "Model", task: TaskSet, corrupted: bool = False, batch_size: int = 16) -> Float[Tensor, "n"]:
    """The last-position logit difference of every target prompt (the clean one unless an item names another,
    `TaskItem.target`), or of every corrupted prompt, batched."""
    toks = task.tokens(model)
    logits = model.logits(task.corrupted if corrupted else task.targets, chat=task.chat, batch_size=batch_size)
    return logit_diff(logits, toks.answer, toks.wrong)


def solve_rate(model: "Model", task: TaskSet) -> float:
    """The share of target prompts (the clean ones unless items name others) whose logit difference is positive
    (the model prefers the answer)."""
    return (logit_diffs(model, task) > 0).float().mean().item()


@torch.no_grad()
def accuracy(model: "Model", task: TaskSet) -> float:
    """The share of clean prompts whose answer has the largest logit among the item's choices.

    A stricter measure than `solve_rate` where a task lists the candidates (`meta["choices"]`, one list of answer
    strings per item: the Laundry List's items), the paper's accuracy; elsewhere the choices are the answer and
    the wrong answer, and this is the solve rate.
    """
    choices = task.meta.get("choices")
    if choices is None:
        return solve_rate(model, task)
    if len(choices) != len(task):
        raise InterpError(f"task {task.name!r} has {len(choices)} choice lists for {len(task)} items; give one per item")
    toks = task.tokens(model)
    logits = model.logits(task.clean, chat=task.chat)
    hits = 0
    for i, options in enumerate(choices):
        ids = [_one_token(model, text, task.name, i, "choice") for text in options]
        hits += ids[int(logits[i, ids].argmax())] == toks.answer[i].item()
    return hits / len(task)


def solvable(model: "Model", task: TaskSet, min_rate: float = 0.5) -> TaskSet:
    """The items the model solves (positive logit difference on the target prompt, the clean one unless the item
    names another), with the solve rate in `meta`.

    Raises InterpError when the model solves fewer than `min_rate` of the items: an analysis of a task the model
    cannot do would explain noise.
    """
    diffs = logit_diffs(model, task)
    solved = (diffs > 0).nonzero().flatten().tolist()
    rate = len(solved) / len(task)
    if not solved or rate < min_rate:
        raise InterpError(f"{model.name} solves {len(solved)} of {len(task)} items of task {task.name!r} "
                          f"({rate:.0%}, below min_rate={min_rate:.0%}); choose a task or list length it solves "
                          f"(interp.circuits.tasks.report shows the rates)")
    kept = task.subset(solved)
    kept.meta.update(solve_rate=rate, n_before=len(task))
    return kept


def report(model: "Model", n: int = 24, seed: int = 0, lengths: Sequence[int] = (2, 4, 6, 8, 10)) -> dict[str, float]:
    """The solve rate of every task (and every Laundry List length, with its `accuracy` among the list's items) on
    `model`, from `n` items each."""
    rates = {name: solve_rate(model, make_task(name, n, seed)) for name in ("ioi", "capitals")}
    for length in lengths:
        task = make_task("laundry", n, seed, length=length)
        rates[f"laundry[length={length}]"] = solve_rate(model, task)
        rates[f"laundry[length={length}].accuracy"] = accuracy(model, task)
    return rates


# ----- generators -----

CORRUPTIONS: tuple[str, ...] = ("abc", "swap", "position")
KINDS: tuple[str, ...] = ("both", "changing")
PRESERVE: tuple[str, ...] = ("same", "names")


def make_task(name: str, n: int, seed: int = 0, **options) -> TaskSet:
    """`n` items of task `name` ("ioi", "laundry" or "capitals"), the same for the same seed.

    Options: chat (all tasks); vocab="all"|"train"|"test" (the word lists and templates drawn from,
    `vocabulary`); test (a share in (0, 1): that many items drawn from the test part and the rest from the train
    part, each marked in meta["part"]; module docstring); ioi: corrupt="abc"|"swap"|"position",
    order="mixed"|"ABBA"|"BABA", template (an index of IOI_TEMPLATES: every item in one template, so positions line
    up across items; default a random one each), and for corrupt="position" kinds="both"|"changing" and
    preserve="same"|"names"; laundry: length (items in the list, 2 or more).
    """
    makers: dict[str, Callable[..., tuple[list[TaskItem], dict]]] = {"ioi": _ioi, "laundry": _laundry,
                                                                      "capitals": _capitals}
    if name not in makers:
        raise InterpError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}, or read your own pairs with from_pairs")
    if not isinstance(n, int) or n < 1:
        raise InterpError(f"n={n!r} items asked for; give a positive integer")
    chat = bool(options.pop("chat", False))
    vocab = options.pop("vocab", "all")
    test = options.pop("test", None)
    if vocab not in PARTS:
        raise InterpError(f"vocab={vocab!r}; choose one of {', '.join(PARTS)}")
    rng = random.Random(seed)
    if test is None:
        items, meta = makers[name](rng, n, vocabulary(name, vocab), **options)
        return TaskSet(name, items, chat=chat, meta={"seed": seed, **meta, **({} if vocab == "all" else {"vocab": vocab})})
    if isinstance(test, bool) or not isinstance(test, (int, float)) or not 0 < test < 1 or vocab != "all":
        raise InterpError(f"test={test!r}: give the share of items drawn from the test vocabulary, in (0, 1), with "
                          f"vocab='all' (got vocab={vocab!r})")
    if options.get("template") is not None:
        raise InterpError("template fixes one template for every item, so the test part could not have its own; "
                          "give template=None with test=..., or vocab='train'/'test' with a template of that part")
    if n < 2:
        raise InterpError(f"n={n}: a train and a test part need at least 2 items")
    n_test = min(n - 1, max(1, round(n * test)))
    items, meta = makers[name](rng, n - n_test, vocabulary(name, "train"), **options)
    if name == "ioi" and options.get("corrupt") == "position":
        options = {**options, "kinds": "changing"}  # the reference's test set: label-changing pairs, both directions
    test_items, test_meta = makers[name](rng, n_test, vocabulary(name, "test"), **options)
    for key in PER_ITEM:
        if key in meta:
            meta[key] = list(meta[key]) + list(test_meta[key])
    meta = {"seed": seed, **meta, "test": test, "part": ["train"] * (n - n_test) + ["test"] * n_test,
            "shared_by_parts": list(SHARED[name])}
    if "kinds" in test_meta:
        meta["test_kinds"] = test_meta["kinds"]
    return TaskSet(name, items + test_items, chat=chat, meta=meta)


def _check_options(task: str, options: dict, allowed: Sequence[str]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InterpError(f"task {task!r} has no option {', '.join(unknown)}; its options are "
                          f"{', '.join(['chat', 'vocab', 'test', *allowed])}")


def _ioi(rng: random.Random, n: int, vocab: dict[str, tuple], corrupt: str = "abc", order: str = "mixed",
         template: int | None = None, kinds: str | None = None, preserve: str | None = None,
         **options) -> tuple[list[TaskItem], dict]:
    _check_options("ioi", options, ["corrupt", "order", "template", "kinds", "preserve"])
    templates, names = vocab["templates"], vocab["names"]
    if template is not None and (not isinstance(template, int) or not 0 <= template < len(IOI_TEMPLATES)):
        raise InterpError(f"ioi: template={template!r}; give an index 0..{len(IOI_TEMPLATES) - 1} of IOI_TEMPLATES, "
                          f"or None for a random template per item")
    if template is not None and IOI_TEMPLATES[template] not in templates:
        raise InterpError(f"ioi: template {template} is not in this vocabulary part; choose one of "
                          f"{[IOI_TEMPLATES.index(t) for t in templates]}")
    if corrupt not in CORRUPTIONS:
        raise InterpError(f"ioi: corrupt={corrupt!r}; use 'abc' (three new names), 'swap' (the IO is repeated instead "
                          f"of S) or 'position' (the position of S, both ways; module docstring)")
    if order not in ("mixed", "ABBA", "BABA"):
        raise InterpError(f"ioi: order={order!r}; use 'mixed', 'ABBA' (IO named first) or 'BABA' (S named first)")
    if corrupt == "position":
        return _ioi_position(rng, n, vocab, template, order, kinds or "both", preserve or "same")
    if kinds is not None or preserve is not None:
        raise InterpError("ioi: kinds and preserve are options of corrupt='position'")
    items = []
    for i in range(n):
        text = rng.choice(templates) if template is None else IOI_TEMPLATES[template]
        place, obj = rng.choice(vocab["places"]), rng.choice(vocab["objects"])
        io, s, c, d, e = rng.sample(names, 5)
        abba = order == "ABBA" or (order == "mixed" and i % 2 == 0)

        def fill(io: str, s: str, s2: str) -> str:
            a, b = (io, s) if abba else (s, io)
            return text.format(A=a, B=b, S=s2, place=place, object=obj)

        clean = fill(io, s, s)
        corrupted = fill(c, d, e) if corrupt == "abc" else fill(io, s, io)
        items.append(TaskItem(clean, corrupted, " " + io, " " + s))
    return items, {"corrupt": corrupt, "order": order, "template": template}


def _ioi_position(rng: random.Random, n: int, vocab: dict[str, tuple], template: int | None, order: str, kinds: str,
                  preserve: str) -> tuple[list[TaskItem], dict]:
    """The position-variable pairs (module docstring): base = corrupted, source = clean."""
    if kinds not in KINDS:
        raise InterpError(f"ioi: kinds={kinds!r}; use 'both' (label-changing and label-preserving pairs) or 'changing'")
    if preserve not in PRESERVE:
        raise InterpError(f"ioi: preserve={preserve!r}; use 'same' (the source is the base prompt) or 'names' (the "
                          f"same pattern with new names)")
    if order != "mixed":
        raise InterpError("ioi: corrupt='position' uses both name orders (ABB and BAB); leave order='mixed'")
    # (base is ABB, source is ABB): the two changing directions first, then the two kept patterns
    combos = [(True, False), (False, True)] + ([(True, True), (False, False)] if kinds == "both" else [])
    items, values = [], []
    for i in range(n):
        text = rng.choice(vocab["templates"]) if template is None else IOI_TEMPLATES[template]
        place, obj = rng.choice(vocab["places"]), rng.choice(vocab["objects"])
        io, s, c, d = rng.sample(vocab["names"], 4)
        base_abb, source_abb = combos[i % len(combos)]

        def fill(io: str, s: str, s2: str, abb: bool) -> str:
            a, b = (io, s) if abb else (s, io)
            return text.format(A=a, B=b, S=s2, place=place, object=obj)

        base = fill(io, s, s, base_abb)
        if base_abb != source_abb:  # the answer moves from the base's IO to its S
            item = TaskItem(fill(io, s, s, source_abb), base, " " + s, " " + io, target=fill(io, s, io, base_abb))
        else:
            source = base if preserve == "same" else fill(c, d, d, source_abb)
            item = TaskItem(source, base, " " + io, " " + s, target=base)
        items.append(item)
        values.append(["ABB" if source_abb else "BAB", "ABB" if base_abb else "BAB"])
    return items, {"corrupt": "position", "kinds": kinds, "preserve": preserve, "template": template,
                   "variable": values}


def _laundry(rng: random.Random, n: int, vocab: dict[str, tuple], length: int = 3,
             **options) -> tuple[list[TaskItem], dict]:
    _check_options("laundry", options, ["length"])
    if not isinstance(length, int) or not 2 <= length <= len(vocab["items"]):
        raise InterpError(f"laundry: length={length!r}; the list needs 2 to {len(vocab['items'])} items")
    items, choices = [], []
    for _ in range(n):
        shopper, pronoun = rng.choice(vocab["shoppers"])
        bought = rng.sample(vocab["items"], length)
        answer = rng.choice(bought)
        again = [x for x in bought if x != answer]
        rng.shuffle(again)
        wrong = rng.choice(again)
        listed = ", ".join(bought[:-1]) + " and " + bought[-1]

        def prompt(mentioned: list[str]) -> str:
            named = ", the ".join(mentioned)
            return f"{shopper} went to the store and bought {listed}. At home, {pronoun} put away the {named} and the"

        clean = prompt(again)
        corrupted = prompt([answer if x == wrong else x for x in again])
        items.append(TaskItem(clean, corrupted, " " + answer, " " + wrong))
        choices.append([" " + x for x in bought])
    return items, {"length": length, "choices": choices}


def _capitals(rng: random.Random, n: int, vocab: dict[str, tuple], **options) -> tuple[list[TaskItem], dict]:
    _check_options("capitals", options, [])
    items = []
    for _ in range(n):
        (country, capital), (other, other_capital) = rng.sample(vocab["capitals"], 2)
        template = rng.choice(vocab["templates"])
        items.append(TaskItem(template.format(country=country), template.format(country=other),
                              " " + capital, " " + other_capital))
    return items, {}


# ----- the user's own pairs -----

def from_pairs(path: str | os.PathLike, chat: bool = False, model: "Model | None" = None) -> TaskSet:
    """A task from a JSONL file: one object per line with the strings clean, corrupted, answer, wrong_answer, and
    optionally target (the prompt whose run a full patch should match, `TaskItem.target`; the corrupted prompt for
    a pair whose label does not change) and part ("train" or "test": a split chosen by the user, which DAS then
    keeps; given on every line or on none).

    With `model`, the pairs are also checked against its tokenizer (`TaskSet.tokens`): same token length per
    pair, one-token answers. Every bad line raises InterpError naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise InterpError(f"pairs file {path} does not exist; give a .jsonl file with {', '.join(PAIR_FIELDS)} per line")
    items, parts = [], []
    for number, row in jsonl_lines(path):
        if not isinstance(row, dict):
            raise InterpError(f"{path}, line {number}: a {type(row).__name__}, not an object with {', '.join(PAIR_FIELDS)}")
        missing = [k for k in PAIR_FIELDS if k not in row]
        if missing:
            raise InterpError(f"{path}, line {number}: missing {', '.join(missing)}; every line needs {', '.join(PAIR_FIELDS)}")
        bad = [k for k in PAIR_FIELDS + OPTIONAL_PAIR_FIELDS
               if (k in row or k in PAIR_FIELDS) and (not isinstance(row[k], str) or not row[k].strip())]
        if bad:
            raise InterpError(f"{path}, line {number}: {', '.join(bad)} must be non-empty strings")
        if row.get("part", "train") not in ("train", "test"):
            raise InterpError(f"{path}, line {number}: part={row['part']!r}; use 'train' or 'test'")
        items.append(TaskItem(row["clean"], row["corrupted"], row["answer"], row["wrong_answer"], row.get("target")))
        parts.append(row.get("part"))
    if not items:
        raise InterpError(f"pairs file {path} has no pairs; write one JSON object per line with {', '.join(PAIR_FIELDS)}")
    meta: dict = {"source": str(path)}
    if any(p is not None for p in parts):
        if any(p is None for p in parts) or len(set(parts)) < 2:
            raise InterpError(f"pairs file {path}: give part ('train' or 'test') on every line, with both parts "
                              f"present, or on none")
        meta["part"] = parts
    task = TaskSet(path.stem, items, chat=chat, meta=meta)
    if model is not None:
        task.tokens(model)
    return task


def load_task(task: str | None, pairs: str | os.PathLike | None, n: int, seed: int = 0, default: str | None = None,
              **options) -> TaskSet:
    """The items of a command: `n` generated items of the task named `task` (with `options`), or the pairs file
    `pairs` (`from_pairs`); exactly one of the two, or neither when `default` names the task to generate."""
    if task is not None and pairs is not None or task is None and pairs is None and default is None:
        raise InterpError(f"give exactly one of --task ({', '.join(TASKS)}) and --pairs FILE.jsonl")
    if pairs is not None:
        return from_pairs(pairs)
    name = task if task is not None else default
    assert name is not None  # checked above
    return make_task(name, n, seed, **options)
