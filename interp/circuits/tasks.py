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


# ----- the data types -----

@dataclass(frozen=True)
class TaskItem:
    """One clean/corrupted pair; answers are the strings the model should continue with (" Mary")."""

    clean: str
    corrupted: str
    answer: str
    wrong: str


@dataclass
class TaskTokens:
    """A task's token ids, checked: clean[i] and corrupted[i] have the same length, answers are one token."""

    clean: list[list[int]]
    corrupted: list[list[int]]
    answer: Int[Tensor, "n"]
    wrong: Int[Tensor, "n"]

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

    def subset(self, keep: Sequence[int]) -> "TaskSet":
        """The items at the indices `keep`, same name, chat flag and meta (per-item `choices` follow the items)."""
        meta = dict(self.meta)
        if "choices" in meta:
            meta["choices"] = [meta["choices"][i] for i in keep]
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
        answer = [_one_token(model, item.answer, self.name, i, "answer") for i, item in enumerate(self.items)]
        wrong = [_one_token(model, item.wrong, self.name, i, "wrong answer") for i, item in enumerate(self.items)]
        for i, (a_id, w_id) in enumerate(zip(answer, wrong)):
            if a_id == w_id:
                raise InterpError(f"task {self.name!r} item {i}: answer {self.items[i].answer!r} and wrong answer "
                                  f"{self.items[i].wrong!r} are the same token; give two different answers")
        return TaskTokens(clean, corrupted, torch.tensor(answer), torch.tensor(wrong))


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
    """The last-position logit difference of every clean (or corrupted) prompt, batched."""
    toks = task.tokens(model)
    logits = model.logits(task.corrupted if corrupted else task.clean, chat=task.chat, batch_size=batch_size)
    return logit_diff(logits, toks.answer, toks.wrong)


def solve_rate(model: "Model", task: TaskSet) -> float:
    """The share of clean prompts whose logit difference is positive (the model prefers the answer)."""
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
    """The items the model solves (positive clean logit difference), with the solve rate in `meta`.

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

def make_task(name: str, n: int, seed: int = 0, **options) -> TaskSet:
    """`n` items of task `name` ("ioi", "laundry" or "capitals"), the same for the same seed.

    Options: chat (all tasks); ioi: corrupt="abc"|"swap", order="mixed"|"ABBA"|"BABA", template (an index of
    IOI_TEMPLATES: every item in one template, so positions line up across items; default a random one each);
    laundry: length (items in the list, 2 or more).
    """
    makers: dict[str, Callable[..., tuple[list[TaskItem], dict]]] = {"ioi": _ioi, "laundry": _laundry,
                                                                      "capitals": _capitals}
    if name not in makers:
        raise InterpError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}, or read your own pairs with from_pairs")
    if not isinstance(n, int) or n < 1:
        raise InterpError(f"n={n!r} items asked for; give a positive integer")
    chat = bool(options.pop("chat", False))
    rng = random.Random(seed)
    items, meta = makers[name](rng, n, **options)
    return TaskSet(name, items, chat=chat, meta={"seed": seed, **meta})


def _check_options(task: str, options: dict, allowed: Sequence[str]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InterpError(f"task {task!r} has no option {', '.join(unknown)}; its options are "
                          f"{', '.join(['chat', *allowed])}")


def _ioi(rng: random.Random, n: int, corrupt: str = "abc", order: str = "mixed", template: int | None = None,
         **options) -> tuple[list[TaskItem], dict]:
    _check_options("ioi", options, ["corrupt", "order", "template"])
    if template is not None and (not isinstance(template, int) or not 0 <= template < len(IOI_TEMPLATES)):
        raise InterpError(f"ioi: template={template!r}; give an index 0..{len(IOI_TEMPLATES) - 1} of IOI_TEMPLATES, "
                          f"or None for a random template per item")
    if corrupt not in ("abc", "swap"):
        raise InterpError(f"ioi: corrupt={corrupt!r}; use 'abc' (three new names) or 'swap' (the IO is repeated instead of S)")
    if order not in ("mixed", "ABBA", "BABA"):
        raise InterpError(f"ioi: order={order!r}; use 'mixed', 'ABBA' (IO named first) or 'BABA' (S named first)")
    items = []
    for i in range(n):
        text = rng.choice(IOI_TEMPLATES) if template is None else IOI_TEMPLATES[template]
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        io, s, c, d, e = rng.sample(NAMES, 5)
        abba = order == "ABBA" or (order == "mixed" and i % 2 == 0)

        def fill(io: str, s: str, s2: str) -> str:
            a, b = (io, s) if abba else (s, io)
            return text.format(A=a, B=b, S=s2, place=place, object=obj)

        clean = fill(io, s, s)
        corrupted = fill(c, d, e) if corrupt == "abc" else fill(io, s, io)
        items.append(TaskItem(clean, corrupted, " " + io, " " + s))
    return items, {"corrupt": corrupt, "order": order, "template": template}


def _laundry(rng: random.Random, n: int, length: int = 3, **options) -> tuple[list[TaskItem], dict]:
    _check_options("laundry", options, ["length"])
    if not isinstance(length, int) or not 2 <= length <= len(ITEMS):
        raise InterpError(f"laundry: length={length!r}; the list needs 2 to {len(ITEMS)} items")
    items, choices = [], []
    for _ in range(n):
        shopper, pronoun = rng.choice(SHOPPERS)
        bought = rng.sample(ITEMS, length)
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


def _capitals(rng: random.Random, n: int, **options) -> tuple[list[TaskItem], dict]:
    _check_options("capitals", options, [])
    items = []
    for _ in range(n):
        (country, capital), (other, other_capital) = rng.sample(CAPITALS, 2)
        template = rng.choice(CAPITAL_TEMPLATES)
        items.append(TaskItem(template.format(country=country), template.format(country=other),
                              " " + capital, " " + other_capital))
    return items, {}


# ----- the user's own pairs -----

def from_pairs(path: str | os.PathLike, chat: bool = False, model: "Model | None" = None) -> TaskSet:
    """A task from a JSONL file: one object per line with the strings clean, corrupted, answer, wrong_answer.

    With `model`, the pairs are also checked against its tokenizer (`TaskSet.tokens`): same token length per
    pair, one-token answers. Every bad line raises InterpError naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise InterpError(f"pairs file {path} does not exist; give a .jsonl file with {', '.join(PAIR_FIELDS)} per line")
    items = []
    for number, row in jsonl_lines(path):
        if not isinstance(row, dict):
            raise InterpError(f"{path}, line {number}: a {type(row).__name__}, not an object with {', '.join(PAIR_FIELDS)}")
        missing = [k for k in PAIR_FIELDS if k not in row]
        if missing:
            raise InterpError(f"{path}, line {number}: missing {', '.join(missing)}; every line needs {', '.join(PAIR_FIELDS)}")
        bad = [k for k in PAIR_FIELDS if not isinstance(row[k], str) or not row[k].strip()]
        if bad:
            raise InterpError(f"{path}, line {number}: {', '.join(bad)} must be non-empty strings")
        items.append(TaskItem(row["clean"], row["corrupted"], row["answer"], row["wrong_answer"]))
    if not items:
        raise InterpError(f"pairs file {path} has no pairs; write one JSON object per line with {', '.join(PAIR_FIELDS)}")
    task = TaskSet(path.stem, items, chat=chat, meta={"source": str(path)})
    if model is not None:
        task.tokens(model)
    return task
