"""Tasks for circuit analysis: pairs of the same token length, one-token answers on both bundled tokenizers,
seeded generation, the normalised metric, clear errors for bad pairs, and tasks the models really solve."""

from __future__ import annotations

import json
import re

import pytest
import torch

from interp.circuits.tasks import (
    CAPITALS,
    IOI_TEMPLATES,
    ITEMS,
    NAMES,
    OBJECTS,
    PLACES,
    TaskItem,
    TaskSet,
    accuracy,
    from_pairs,
    logit_diff,
    logit_diffs,
    make_task,
    normalise,
    solvable,
    solve_rate,
)
from interp.errors import InterpError

VARIANTS = [("ioi", {}), ("ioi", {"corrupt": "swap"}), ("ioi", {"order": "BABA"}), ("capitals", {}),
            ("laundry", {"length": 2}), ("laundry", {"length": 8}), ("ioi", {"corrupt": "position", "test": 0.25}),
            ("ioi", {"corrupt": "position", "preserve": "names"}), ("capitals", {"test": 0.5}),
            ("laundry", {"length": 3, "vocab": "test"})]


@pytest.mark.parametrize("which", ["smol", "qwen"])
def test_word_lists_are_single_tokens(which, request):
    """Every name, place, object, item, country and capital is one token with its leading space, on both bundled
    tokenizers."""
    tok = request.getfixturevalue(which).tokenizer
    words = [*NAMES, *PLACES, *OBJECTS, *ITEMS, *(c for pair in CAPITALS for c in pair)]
    multi = [w for w in words if len(tok(" " + w, add_special_tokens=False).input_ids) != 1]
    assert not multi, f"not one token on {which}: {multi}"


@pytest.mark.parametrize("which", ["smol", "qwen"])
def test_pairs_have_the_same_token_length(which, request):
    """Every task's clean and corrupted prompts line up token for token, and they differ (a real corruption)."""
    model = request.getfixturevalue(which)
    for name, options in VARIANTS:
        task = make_task(name, 40, seed=1, **options)
        toks = task.tokens(model)
        assert len(toks) == 40 and toks.answer.shape == toks.wrong.shape == (40,)
        assert all(len(a) == len(b) for a, b in zip(toks.clean, toks.corrupted)), (name, options)
        kept = [not item.changes for item in task.items]  # a kept-label pair may repeat its base prompt
        assert all(a != b or k for a, b, k in zip(toks.clean, toks.corrupted, kept)), (name, options)
        assert (toks.answer != toks.wrong).all()
        if toks.target is not None:
            assert [len(t) for t in toks.target] == [len(c) for c in toks.corrupted], (name, options)
    for template in range(len(IOI_TEMPLATES)):  # one template: every item has the same length (positions line up)
        toks = make_task("ioi", 12, template=template).tokens(model)
        assert len({len(ids) for ids in toks.clean + toks.corrupted}) == 1, IOI_TEMPLATES[template]


def _count(text: str, word: str) -> int:
    """How often `word` (with its leading space) stands in `text` as a whole word (" Dan" is not in " Daniel")."""
    return len(re.findall(re.escape(word) + r"\b", text))


def test_corruptions_do_what_they_say():
    """ABC: three new names, none of them the answer or the wrong answer; swap: the IO is repeated instead of S;
    laundry: the answer is mentioned in the wrong item's place; capitals: another country."""
    for item in make_task("ioi", 20, corrupt="abc").items:
        assert _count(item.clean, item.answer) == 1 and _count(item.clean, item.wrong) == 2
        assert _count(item.corrupted, item.answer) == 0 and _count(item.corrupted, item.wrong) == 0
    for item in make_task("ioi", 20, corrupt="swap").items:
        assert _count(item.corrupted, item.answer) == 2 and _count(item.corrupted, item.wrong) == 1
    task = make_task("laundry", 20, length=5)
    assert task.meta["length"] == 5 and all(len(c) == 5 for c in task.meta["choices"])
    for item in task.items:
        assert _count(item.clean, item.answer) == 1 and _count(item.clean, item.wrong) == 2
        assert _count(item.corrupted, item.answer) == 2 and _count(item.corrupted, item.wrong) == 1
    country = {capital: c for c, capital in CAPITALS}
    for item in make_task("capitals", 20).items:
        assert country[item.answer.strip()] in item.clean and country[item.wrong.strip()] in item.corrupted
    for item in make_task("ioi", 20, corrupt="position").items:  # the base's names in both prompts of a pair
        assert _count(item.corrupted, item.answer) + _count(item.corrupted, item.wrong) == 3
        assert (_count(item.corrupted, item.answer) == 2) == item.changes  # a changing pair's answer is the base's S
        assert item.target is not None and _count(item.target, item.answer) == 1  # the target answers `answer`


def test_seeded_determinism():
    for name, options in VARIANTS:
        assert make_task(name, 12, seed=3, **options) == make_task(name, 12, seed=3, **options)
        assert make_task(name, 12, seed=3, **options).items != make_task(name, 12, seed=4, **options).items


def test_subset_keeps_per_item_meta():
    task = make_task("ioi", 12, corrupt="position", test=0.25)
    sub = task.subset([0, 11])
    assert sub.meta["part"] == ["train", "test"] and sub.meta["variable"] == [task.meta["variable"][i] for i in (0, 11)]
    assert sub.targets == [task.targets[0], task.targets[11]] and sub.parts == ["train", "test"]


def test_logit_diff_and_normalisation(smol):
    """The metric is logit[answer] - logit[wrong]; normalised, the clean run scores 1 and the corrupted run 0."""
    task = make_task("ioi", 6)
    toks = task.tokens(smol)
    clean, corrupted = smol.logits(task.clean, chat=False), smol.logits(task.corrupted, chat=False)
    diff = logit_diff(clean, toks.answer, toks.wrong)
    assert torch.allclose(diff, clean[torch.arange(6), toks.answer] - clean[torch.arange(6), toks.wrong])
    assert torch.equal(logit_diff(torch.stack([clean, corrupted]), toks.answer, toks.wrong)[0], diff)  # leading dims
    c, k = diff.mean(), logit_diff(corrupted, toks.answer, toks.wrong).mean()
    assert c > k + 1, "the corruption should remove most of the logit difference"
    assert normalise(c, c, k).item() == pytest.approx(1.0) and normalise(k, c, k).item() == pytest.approx(0.0)
    assert normalise((c + k) / 2, c, k).item() == pytest.approx(0.5)
    assert normalise(3.0, 2.0, 1.0) == 2.0
    with pytest.raises(InterpError, match="equal"):
        normalise(1.0, 2.0, 2.0)


def test_solvable_keeps_solved_items_and_refuses_an_unsolvable_task(smol):
    task = make_task("laundry", 12, length=3)
    kept = solvable(smol, task, min_rate=0.5)
    assert kept.meta["solve_rate"] == solve_rate(smol, task) and 0 < len(kept) <= 12
    assert (logit_diffs(smol, kept) > 0).all() and len(kept.meta["choices"]) == len(kept)
    assert solve_rate(smol, kept) == 1.0 and accuracy(smol, kept) <= 1.0  # accuracy: the answer beats every item
    flipped = TaskSet("flipped", [TaskItem(i.clean, i.corrupted, i.wrong, i.answer) for i in task.items])
    with pytest.raises(InterpError, match="solves .* of 12 items of task 'flipped'"):
        solvable(smol, flipped, min_rate=0.5)


def test_laundry_accuracy_falls_with_list_length(smol):
    """The Laundry List's point: recalling the one unmentioned item gets harder as the list grows (SmolLM2: about
    0.95 of 24 items at 2 items, 0.4 at 10)."""
    short, long = make_task("laundry", 16, length=2), make_task("laundry", 16, length=10)
    assert accuracy(smol, short) > accuracy(smol, long) + 0.2
    assert accuracy(smol, long) <= solve_rate(smol, long)  # the wrong answer is one of the choices


def test_bad_items_are_named(smol):
    good = TaskItem("When Mary and John went to the store, John gave a drink to",
                    "When Kate and Paul went to the store, Mike gave a drink to", " Mary", " John")
    uneven = TaskItem(good.clean, "When Mary and John went to the big store, John gave a drink to", " Mary", " John")
    with pytest.raises(InterpError, match="item 1: the clean prompt is .* same token length"):
        TaskSet("mine", [good, uneven]).tokens(smol)
    with pytest.raises(InterpError, match="item 0: the answer ' Marylebone' is .* one token"):
        TaskSet("mine", [TaskItem(good.clean, good.corrupted, " Marylebone", " John")]).tokens(smol)
    with pytest.raises(InterpError, match="same token"):
        TaskSet("mine", [TaskItem(good.clean, good.corrupted, " John", " John")]).tokens(smol)
    with pytest.raises(InterpError, match="unknown task 'sva'"):
        make_task("sva", 4)
    with pytest.raises(InterpError, match="no option size"):
        make_task("capitals", 4, size=3)
    with pytest.raises(InterpError, match="template=99"):
        make_task("ioi", 4, template=99)
    with pytest.raises(InterpError, match="length=1"):
        make_task("laundry", 4, length=1)
    with pytest.raises(InterpError, match="kinds and preserve are options of corrupt='position'"):
        make_task("ioi", 4, corrupt="swap", kinds="both")
    with pytest.raises(InterpError, match="test=1.5"):
        make_task("ioi", 4, test=1.5)
    with pytest.raises(InterpError, match="vocab='dev'"):
        make_task("ioi", 4, vocab="dev")


def _write(path, rows: list) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_from_pairs(tmp_path, smol):
    row = {"clean": "The capital of France is", "corrupted": "The capital of Spain is", "answer": " Paris",
           "wrong_answer": " Madrid"}
    task = from_pairs(_write(tmp_path / "mine.jsonl", [row, "", row]), model=smol)
    assert task.name == "mine" and len(task) == 2 and task.items[0] == TaskItem(*row.values())
    assert solve_rate(smol, task) == 1.0 and task.parts is None and task.items[0].target is None
    marked = from_pairs(_write(tmp_path / "parts.jsonl", [{**row, "part": "train"}, {**row, "part": "test",
                                                                                     "target": row["clean"]}]))
    assert marked.parts == ["train", "test"] and marked.items[1].target == row["clean"]
    cases = {
        "missing wrong_answer": [{k: v for k, v in row.items() if k != "wrong_answer"}],
        "line 2: not valid JSON": [row, "{clean: 1"],
        "must be non-empty strings": [{**row, "answer": 3}],
        "not an object": [json.dumps([1, 2])],
        "no pairs": [""],
    }
    for message, rows in cases.items():
        with pytest.raises(InterpError, match=message):
            from_pairs(_write(tmp_path / "bad.jsonl", rows))
    with pytest.raises(InterpError, match="same token length"):
        from_pairs(_write(tmp_path / "bad.jsonl", [{**row, "corrupted": "The capital of the United Kingdom is"}]),
                   model=smol)
    with pytest.raises(InterpError, match="does not exist"):
        from_pairs(tmp_path / "none.jsonl")


def test_qwen_solves_ioi_and_capitals(qwen):
    """The bundled 0.5B model solves a handful of IOI and capital items (the README's solve rates, measured small)."""
    assert solve_rate(qwen, make_task("ioi", 8)) > 0.7
    assert solve_rate(qwen, make_task("capitals", 8)) > 0.7
