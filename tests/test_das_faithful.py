"""DAS as the reference runs it (Makelov et al. 2024, github.com/amakelov/activation-patching-illusion): test items
from a disjoint vocabulary, the position variable's pairs in both directions and with kept labels, the user's own
pairs, and the residual stream decomposed against the heads that read it. Tiny random models only (unit tier)."""

from __future__ import annotations

import json
import re
from typing import Sequence

import pytest
import torch
from typer.testing import CliRunner

from analyses import subspaces
from interp.circuits import das, illusion
from interp.circuits.heads import head_weights
from interp.circuits.illusion import Thresholds, decompose, diagnose, reader_weight, rowspace
from interp.circuits.tasks import (
    CAPITAL_TEMPLATES,
    IOI_TEMPLATES,
    TaskSet,
    from_pairs,
    load_task,
    make_task,
    vocabulary,
)
from interp.cli import app
from interp.core.interventions import patch_component
from interp.core.subspace import Subspace
from interp.errors import InterpError
from tests.tiny import tiny_model

SITE = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return tiny_model("llama", tokenizer)


def _words(text: str, words: Sequence[str]) -> set[str]:
    return {w for w in words if re.search(r"\b" + re.escape(w) + r"\b", text)}


def _template(text: str, templates: Sequence[str]) -> str:
    for t in templates:
        pattern = re.escape(t)
        for field in ("A", "B", "S", "place", "object", "country"):
            pattern = pattern.replace(re.escape("{" + field + "}"), r"\w+")
        if re.fullmatch(pattern, text):
            return t
    raise AssertionError(f"no template matches {text!r}")


def _vocab_of(task: TaskSet, i: int) -> dict[str, set[str]]:
    """The names, places, objects and template item i of an IOI task uses, over all its prompts."""
    item = task.items[i]
    texts = [item.clean, item.corrupted, item.target or item.clean]
    every = vocabulary("ioi")
    out: dict[str, set[str]] = {key: set() for key in ("names", "places", "objects", "templates")}
    for text in texts:
        for key in ("names", "places", "objects"):
            out[key] |= _words(text, every[key])
        out["templates"].add(_template(text, IOI_TEMPLATES))
    return out


# ----- the task's parts -----

def test_vocabulary_parts_are_disjoint_halves():
    for task in ("ioi", "capitals", "laundry"):
        train, test, every = vocabulary(task, "train"), vocabulary(task, "test"), vocabulary(task)
        for key in every:
            assert set(train[key]) | set(test[key]) == set(every[key]), (task, key)
            assert not set(train[key]) & set(test[key]), (task, key)
    assert {p for _, p in vocabulary("laundry", "train")["shoppers"]} == {"he", "she"}


def test_test_items_share_no_name_object_place_or_template_with_training_items():
    """The reference's train_distribution / test_distribution: every test item of make_task(..., test=...) uses only
    the test half of the names, objects, places and templates, every training item only the other half."""
    task = make_task("ioi", 80, seed=3, corrupt="position", test=0.25)
    parts = task.parts
    assert parts is not None and parts.count("test") == 20
    used = {part: {key: set() for key in ("names", "places", "objects", "templates")} for part in ("train", "test")}
    for i, part in enumerate(parts):
        for key, words in _vocab_of(task, i).items():
            allowed = set(vocabulary("ioi", part)[key])
            assert words <= allowed, (i, part, key, words)
            used[part][key] |= words
    for key in used["train"]:
        assert used["train"][key] and used["test"][key] and not used["train"][key] & used["test"][key], key
    caps = make_task("capitals", 20, seed=1, test=0.5)
    for item, part in zip(caps.items, caps.meta["part"]):
        countries = {c for c, _ in vocabulary("capitals", part)["capitals"]}
        assert _words(item.clean + item.corrupted, [c for c, _ in vocabulary("capitals")["capitals"]]) <= countries
        assert _template(item.clean, CAPITAL_TEMPLATES) in vocabulary("capitals", part)["templates"]
    laundry = make_task("laundry", 6, seed=1, test=0.5, length=3)
    assert laundry.meta["shared_by_parts"] == ["template"] and len(laundry.meta["choices"]) == 6
    with pytest.raises(InterpError, match="template fixes one template"):
        make_task("ioi", 8, test=0.25, template=0)
    with pytest.raises(InterpError, match="not in this vocabulary part"):
        make_task("ioi", 8, vocab="test", template=0)


def test_position_pairs_both_directions_and_kept_labels():
    """kinds='both': the two label-changing directions (ABB <- BAB, BAB <- ABB) and the two kept patterns, in equal
    numbers; a changing pair's answer is the base's S, a kept pair's the base's IO; the test part holds changing
    pairs only (the reference's test set)."""
    task = make_task("ioi", 40, seed=0, corrupt="position", test=0.2)
    train = [i for i, p in enumerate(task.meta["part"]) if p == "train"]
    test = [i for i, p in enumerate(task.meta["part"]) if p == "test"]
    combos = [tuple(task.meta["variable"][i]) for i in train]
    assert {c: combos.count(c) for c in set(combos)} == {("BAB", "ABB"): 8, ("ABB", "BAB"): 8, ("ABB", "ABB"): 8,
                                                         ("BAB", "BAB"): 8}
    assert all(task.items[i].changes for i in test) and {tuple(task.meta["variable"][i]) for i in test} == \
        {("BAB", "ABB"), ("ABB", "BAB")}
    for item in task.items:
        first = re.search(r"(\w+) and (\w+)", item.corrupted)
        assert first is not None
        a, b = first.groups()
        s2 = a if _words(item.corrupted.split(b, 1)[1], [a]) else b  # the repeated name: the base's S
        io = b if s2 == a else a
        if item.changes:
            assert (item.answer, item.wrong) == (" " + s2, " " + io)
            assert set(_words(item.clean, [a, b])) == {a, b} and item.clean != item.corrupted  # same names, swapped
            assert item.target is not None and item.target != item.corrupted
        else:
            assert (item.answer, item.wrong) == (" " + io, " " + s2)
            assert item.clean == item.corrupted == item.target  # preserve='same': the reference's source is the base
    names = make_task("ioi", 8, seed=0, corrupt="position", preserve="names")
    kept = [item for item in names.items if not item.changes]
    assert kept and all(item.clean != item.corrupted and item.target == item.corrupted for item in kept)
    only = make_task("ioi", 8, seed=0, corrupt="position", kinds="changing")
    assert all(item.changes for item in only.items)


# ----- DAS on the parts -----

def test_das_trains_on_both_kinds_and_tests_on_the_disjoint_part(tiny):
    task = make_task("ioi", 24, seed=0, corrupt="position", test=0.25)
    problem = das.interchange(tiny, task, SITE)
    assert problem.parts == task.parts
    fit = das.train(problem, 1, epochs=1, progress=False)
    assert fit.split.how == "disjoint"
    assert fit.split.test == [i for i, p in enumerate(task.parts or []) if p == "test"]
    assert not set(fit.split.train) & set(fit.split.test) and not set(fit.split.val) & set(fit.split.test)
    kinds = {bool(problem.changes[i]) for i in fit.split.train}  # type: ignore[index]
    assert kinds == {True, False}  # label-changing and label-kept pairs both train
    train_words = set().union(*(_vocab_of(task, i)["names"] | _vocab_of(task, i)["templates"] for i in fit.split.train))
    test_words = set().union(*(_vocab_of(task, i)["names"] | _vocab_of(task, i)["templates"] for i in fit.split.test))
    assert not train_words & test_words
    # the kept-label pairs have no gap to recover: recovery is measured on the changing ones only
    kept = [i for i in range(problem.n) if not bool(problem.changes[i])]  # type: ignore[index]
    with pytest.raises(InterpError, match="none of these items changes its label"):
        problem.recovery(kept, None)
    acc = problem.accuracy(fit.split.train, fit.subspace.basis)
    assert set(acc) == {"all", "changing", "kept"} and problem.accuracy(fit.split.test, None)["kept"] is None
    on_kept = [i for i in fit.split.train if i in kept]
    assert problem.accuracy(on_kept, fit.subspace.basis) == problem.accuracy(on_kept, None)  # same prompt: no move


def test_subspaces_run_defaults_to_the_disjoint_split_and_records_departures(tiny, monkeypatch):
    monkeypatch.setattr(subspaces, "solvable", lambda model, task, rate: task)  # a random model solves nothing
    task = make_task("ioi", 24, seed=0, corrupt="position", test=0.25)
    res = subspaces.run(tiny, task, subspaces.SubspacesConfig(SITE, epochs=1, readers=("1.0", "1.3")))
    summary = res.summary()
    assert summary["split"] == "disjoint" and summary["pair_kinds"]["test"]["kept"] == 0
    assert summary["pair_kinds"]["train"]["changing"] > 0 and summary["pair_kinds"]["train"]["kept"] > 0
    assert res.readers["heads"] == ["1.0", "1.3"] and res.readers["rank"] == 2 * tiny.d_head
    assert all(t["fixed"] == "before the run: the config default" for t in res.thresholds.values())
    assert not any("random" in d or "one-way" in d for d in res.departures)
    assert set(res.accuracy) == set(res.recoveries)
    with pytest.raises(InterpError, match="no train/test parts"):
        subspaces.run(tiny, make_task("ioi", 8, corrupt="swap"), subspaces.SubspacesConfig(SITE))
    old = subspaces.run(tiny, make_task("ioi", 12, corrupt="swap"),
                        subspaces.SubspacesConfig(SITE, epochs=1, split="random", moves=0.3))
    assert old.fit.split.how == "random"
    assert any("split='random'" in d for d in old.departures) and any("one-way" in d for d in old.departures)
    assert any("not decomposed" in d for d in old.departures)  # no readers named, no sweep
    assert old.thresholds["moves"]["fixed"].startswith("before the run: set in the config")
    assert old.thresholds["moves"]["value"] == 0.3


def test_config_thresholds_repeat_the_illusion_defaults():
    cfg = subspaces.SubspacesConfig("blocks.0.hook_resid_post")
    assert cfg.thresholds() == Thresholds() == Thresholds(illusion.MOVES, illusion.NULL_SHARE, illusion.NEEDS_NULL,
                                                          illusion.EXCESS)


# ----- the user's pairs -----

def _pairs_file(tmp_path, task: TaskSet) -> str:
    rows = [{"clean": it.clean, "corrupted": it.corrupted, "answer": it.answer, "wrong_answer": it.wrong,
             "target": it.target, "part": part} for it, part in zip(task.items, task.meta["part"])]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_pairs_file_reads_target_and_part(tmp_path):
    task = make_task("ioi", 12, seed=2, corrupt="position", test=0.25)
    mine = from_pairs(_pairs_file(tmp_path, task))
    assert mine.items == task.items and mine.parts == task.parts
    assert load_task(None, tmp_path / "mine.jsonl", 99).items == task.items  # the shared reader of patch and das
    assert load_task(None, None, 4, default="capitals").name == "capitals"
    with pytest.raises(InterpError, match="exactly one of --task"):
        load_task("ioi", tmp_path / "mine.jsonl", 4)
    rows = (tmp_path / "mine.jsonl").read_text().splitlines()
    (tmp_path / "half.jsonl").write_text(rows[0] + "\n" + json.dumps({**json.loads(rows[1]), "part": None}) + "\n")
    with pytest.raises(InterpError, match="part"):
        from_pairs(tmp_path / "half.jsonl")
    one = {k: v for k, v in json.loads(rows[0]).items() if k != "part"}
    (tmp_path / "nopart.jsonl").write_text(json.dumps(one) + "\n" + json.dumps({**one, "part": "test"}) + "\n")
    with pytest.raises(InterpError, match="on every line"):
        from_pairs(tmp_path / "nopart.jsonl")
    (tmp_path / "badpart.jsonl").write_text(json.dumps({**one, "part": "dev"}) + "\n")
    with pytest.raises(InterpError, match="part='dev'"):
        from_pairs(tmp_path / "badpart.jsonl")


def test_cli_das_reads_and_uses_the_users_pairs(tiny, monkeypatch, tmp_path):
    monkeypatch.setattr("interp.cli.common.load_model", lambda model, backend="hooks": tiny)
    monkeypatch.setattr(subspaces, "solvable", lambda model, task, rate: task)
    task = make_task("ioi", 16, seed=5, corrupt="position", test=0.25)
    path = _pairs_file(tmp_path, task)
    out = tmp_path / "das"
    res = CliRunner().invoke(app, ["das", "--pairs", path, "--site", SITE, "--epochs", "1", "--reader", "1.1",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    summary = json.loads((out / "result.json").read_text())
    assert summary["task"] == "mine" and summary["split"] == "disjoint"
    assert sum(summary["n_items"].values()) == 16 and summary["n_items"]["test"] == 4
    assert summary["readers"]["heads"] == ["1.1"] and summary["options"]["task"]["source"] == path
    assert any("the user's pairs" in d for d in summary["departures"])
    tokens = task.tokens(tiny)
    sub = Subspace.load(out, model=tiny)
    assert sub.provenance["data_hash"] == Subspace.data_hash(tokens.clean, tokens.corrupted)  # these pairs trained it
    both = CliRunner().invoke(app, ["das", "--pairs", path, "--task", "ioi", "--site", SITE,
                                    "--out", str(tmp_path / "x")])
    assert both.exit_code != 0 and "exactly one of --task" in str(both.exception)


# ----- the residual stream's readers -----

def test_reader_heads_weights_and_decomposition(tiny):
    hw = head_weights(tiny, fold_norm=True)
    q = reader_weight(tiny, SITE, ["1.0", (1, 3)])
    assert q is not None and torch.equal(q, torch.cat([hw.W_Q[1, 0].T, hw.W_Q[1, 3].T]))
    group = hw.n_heads // hw.n_kv_heads
    kv = reader_weight(tiny, SITE, ["1.3"], ("K", "V"))
    assert kv is not None and torch.equal(kv, torch.cat([hw.W_K[1, 3 // group].T, hw.W_V[1, 3 // group].T]))
    assert reader_weight(tiny, SITE) is None  # no readers named: the whole stream
    assert reader_weight(tiny, "blocks.0.hook_resid_pre", ["0.1"]) is not None  # layer 0's heads read its input
    v = torch.randn(5, tiny.d_model, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    row, null = decompose(v, q)
    assert torch.allclose(row + null, v, atol=1e-12)  # the two parts sum to the direction
    coef = torch.linalg.lstsq(q.T, row.T).solution  # the rowspace part is a combination of the readers' rows
    assert torch.allclose(q.T @ coef, row.T, atol=1e-9)
    assert (q @ null.T).abs().max() < 1e-9  # the readers do not see the kernel part
    assert rowspace(q).shape[0] == 2 * tiny.d_head
    for bad, message in (((["0.1"],), "cannot read"), ((["1.9"],), "cannot read"), ((["x"],), "LAYER.HEAD"),
                         ((["1.0"], ("O",)), "reader weights")):
        with pytest.raises(InterpError, match=message):
            reader_weight(tiny, SITE, *bad)
    with pytest.raises(InterpError, match="residual stream"):
        reader_weight(tiny, "blocks.0.mlp.hook_post", ["1.0"])


def _linear_interchange(reader: torch.Tensor, through: torch.Tensor, around: torch.Tensor,
                        n: int = 32) -> das.Interchange:
    """Activations whose logit difference is h . (R^T w) + h . around: read by `reader` R (through a readout w with
    R^T w along the unit vector `through`) and, beside it, along `around`; the source runs differ from the base runs
    by a unit step along `through` and one along `around`, so a direction moves the output through the readers or
    around them."""
    gen = torch.Generator().manual_seed(1)
    d = reader.shape[1]
    r = reader.double()
    w = torch.linalg.lstsq(r.T, through.double()[:, None]).solution[:, 0]  # R^T w = through
    a = r.T @ w
    base = torch.randn(n, d, generator=gen, dtype=torch.float64)
    source = base + through.double() + around.double() + 0.01 * torch.randn(n, d, generator=gen, dtype=torch.float64)

    def ld_of(h: torch.Tensor) -> torch.Tensor:
        return (h.double() @ (a + around.double())).float()

    def run(items, basis):
        i = torch.as_tensor(list(items))
        h = source[i] if basis is None else patch_component(base[i], source[i], basis.double())
        ld = ld_of(h)
        return torch.stack([-ld / 2, ld / 2], -1)

    return das.Interchange(run, source[:, None].float(), base[:, None].float(), torch.ones(n, dtype=torch.long),
                           torch.zeros(n, dtype=torch.long), ld_of(source), ld_of(base), {"site": "resid"}, n)


def test_directions_inside_and_outside_the_readers_are_judged_accordingly(tiny):
    """With the tiny model's reader heads: a direction inside their rowspace moves the output through them and is
    consistent; one in their kernel that moves the output (through another reader) is flagged as outside the
    readers, with all its patched variance in the kernel and nothing restored by its (empty) rowspace part."""
    reader = reader_weight(tiny, SITE, ["1.0", "1.2"])
    assert reader is not None
    rows = rowspace(reader)
    gen = torch.Generator().manual_seed(2)
    _, kernel = decompose(torch.randn(1, tiny.d_model, generator=gen, dtype=torch.float64), rows=rows)
    v_out = (kernel / kernel.norm())[0]
    inside = rows.T @ torch.randn(rows.shape[0], generator=gen, dtype=torch.float64)
    v_in = inside / inside.norm()
    problem = _linear_interchange(reader, v_in, v_out)
    items = list(range(problem.n))
    t = Thresholds()
    note = illusion.describe_reader(SITE, ["1.0", "1.2"])
    judged = {name: diagnose(problem, v[None].float(), reader, items, name, rows=rows, thresholds=t,
                             reader_note=note, rule="outside the readers") for name, v in (("in", v_in), ("out", v_out))}
    d_in, d_out = judged["in"], judged["out"]
    assert d_in.null_norm_share < 1e-6 and d_in.null_variance_share < 1e-6 and d_in.effect["whole"] >= t.moves
    assert d_in.verdict == "consistent" and abs(d_in.effect["rowspace"] - d_in.effect["whole"]) < 1e-4
    assert d_out.null_norm_share > 1 - 1e-6 and d_out.null_variance_share > 1 - 1e-6
    assert d_out.effect["rowspace"] == 0.0 and d_out.effect["whole"] >= t.moves
    assert d_out.illusion and d_out.reasons[0].startswith("outside the readers")
    assert "1.0, 1.2" in d_out.to_json()["reader"]
    assert abs(d_in.effect["whole"] + d_out.effect["whole"] - 1) < 1e-3  # the two steps make up the whole gap


def test_readers_from_a_patching_sweep(tiny, monkeypatch, tmp_path):
    """Without named readers, the top heads of a heads sweep among the layers that read the site (from a
    PatchingResult, its summary or its result.json); recorded as chosen from data."""
    from analyses.patching import Grid, PatchingResult

    monkeypatch.setattr(subspaces, "solvable", lambda model, task, rate: task)
    values = [[9.0, 9.0, 9.0, 9.0], [0.1, 0.7, -0.2, 0.5]]
    sweep = {"grids": {"heads": {"values": values, "row_labels": [0, 1],
                                 "column_labels": [0, 1, 2, 3], "columns": "head"}}, "task": "ioi", "n_items": 8}
    assert subspaces.top_heads(sweep, SITE, 2) == ([(1, 1), (1, 3)], "given as a summary: task 'ioi', 8 items")
    assert subspaces.top_heads(sweep, "blocks.0.hook_resid_pre", 1)[0] == [(0, 0)]
    (tmp_path / "result.json").write_text(json.dumps(sweep))
    assert subspaces.top_heads(tmp_path, SITE, 1)[0] == [(1, 1)]
    result = PatchingResult("tiny", "ioi", 8, 1.0, 1.0, 0.0,
                            {"heads": Grid(torch.tensor(values), [0, 1], ["0", "1", "2", "3"], "head")})
    assert subspaces.top_heads(result, SITE, 3)[0] == [(1, 1), (1, 3), (1, 0)]
    with pytest.raises(InterpError, match="no heads grid"):
        subspaces.top_heads({"grids": {}}, SITE, 1)
    task = make_task("ioi", 16, seed=0, corrupt="position", test=0.25)
    res = subspaces.run(tiny, subspaces.SubspacesData(task, sweep=sweep, choices={"site": "by hand"}),
                        subspaces.SubspacesConfig(SITE, epochs=1, n_readers=2))
    assert res.readers["heads"] == ["1.1", "1.3"] and "patching sweep" in res.chosen_from_data["readers"]
    assert res.chosen_from_data["site"] == "by hand"
