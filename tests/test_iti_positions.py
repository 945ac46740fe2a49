"""Where ITI's head shift acts (issue 19), on tiny random models: by default where the reference acts (the last token
of each forward when generating, the answer's tokens when scoring multiple choice), every position only when asked;
exact with the prefix cache; the capability cost measured at every position; `interp truthful eval` leaves out the
questions an intervention was fitted on, or refuses."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from analyses import truthful as T
from interp.cli import app
from interp.core.hooks import hooked
from interp.core.likelihood import _rows, continuations
from interp.core.prefix import SAME_EVERYWHERE, PrefixRule, rule
from interp.core.sites import Site
from interp.data.truthfulqa import Question
from interp.errors import InterpError
from interp.steering.head_steering import HeadSteering
from tests.conftest import DEVICE, registered_hooks
from tests.tiny import FAMILIES, tiny_model

pytestmark = pytest.mark.unit

PROMPTS = ["Write a haiku about rain.", "Name three colours of the autumn sky, please."]  # different lengths
LAYER, HEAD = 0, 1
READ = "blocks.1.hook_resid_post"  # downstream of the shift
Z = f"blocks.{LAYER}.attn.hook_z"
ATOL = 1e-5


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tokenizer):
    return tiny_model(request.param, tokenizer, DEVICE)


@pytest.fixture(scope="module")
def llama(tokenizer):
    return tiny_model("llama", tokenizer, DEVICE)


def _steer(model, alpha: float = 4.0, positions: str = "last", provenance: dict | None = None) -> HeadSteering:
    g = torch.Generator().manual_seed(0)
    return HeadSteering([(LAYER, HEAD)], torch.randn(1, model.d_head, generator=g), torch.ones(1), alpha,
                        provenance or {}, positions)


def _by_hand(model, offset: torch.Tensor, ids: list[int], start: int) -> torch.Tensor:
    """Logits of one unpadded forward of `ids` with `offset` added to the head at columns >= start (no cache)."""
    def add(site, x):
        x = x.clone()
        x[:, start:, HEAD] += offset.to(x)
        return x

    with torch.no_grad(), hooked(model, {Site(LAYER, "attn.hook_z"): [add]}):
        return model.hf(torch.tensor([ids], device=model.device), use_cache=False).logits[0].float().cpu()


# ----- the intervention -----

def test_the_default_shifts_the_last_token_only_and_all_shifts_every_position(tiny):
    steer = _steer(tiny)
    assert steer.positions == "last"
    offset = steer.offsets(tiny)[LAYER][HEAD]
    plain = tiny.capture(PROMPTS, [Z, READ], positions="all", use_prefix_cache=False)
    with tiny.intervene(steer):
        last = tiny.capture(PROMPTS, [Z, READ], positions="all", use_prefix_cache=False)
        cached = tiny.capture(PROMPTS, [Z, READ], positions="all", use_prefix_cache=True)
    with tiny.intervene(steer.at("all")):
        every = tiny.capture(PROMPTS, [Z, READ], positions="all", use_prefix_cache=False)
        every_cached = tiny.capture(PROMPTS, [Z, READ], positions="all", use_prefix_cache=True)
    mask = plain.mask
    assert mask[:, -1].all()  # left padding: every row ends in the last column
    earlier = mask.clone()
    earlier[:, -1] = False
    for s in (Z, READ):  # before the last token: bit for bit the plain run
        assert torch.equal(last[s][earlier], plain[s][earlier]), s
        assert torch.allclose(cached[s].float(), last[s].float(), atol=ATOL), s  # the prefix cache stays exact
        assert torch.allclose(every_cached[s].float(), every[s].float(), atol=ATOL), s
    z, z0 = last[Z].float(), plain[Z].float()
    assert torch.allclose(z[:, -1, HEAD] - z0[:, -1, HEAD], offset.expand_as(z[:, -1, HEAD]), atol=1e-4)
    assert torch.equal(last[Z][:, -1, [h for h in range(tiny.n_heads) if h != HEAD]],
                       plain[Z][:, -1, [h for h in range(tiny.n_heads) if h != HEAD]])
    assert ((last[READ][:, -1] - plain[READ][:, -1]).abs().amax(-1) > 1e-4).all()  # the last token moved, every row
    shift = (every[Z].float() - z0)[mask][:, HEAD]  # every real position of every row
    assert torch.allclose(shift, offset.expand_as(shift), atol=1e-4)
    assert ((every[READ] - plain[READ]).abs().amax(-1)[mask] > 1e-4).all()
    assert registered_hooks(tiny) == 0


def _read_by_hand(model, offset: torch.Tensor, ids: list[int], start: int) -> torch.Tensor:
    """`READ` [pos, d] of one unpadded forward of `ids` with `offset` added to the head at columns >= start."""
    seen: list[torch.Tensor] = []

    def add(site, x):
        x = x.clone()
        x[:, start:, HEAD] += offset.to(x)
        return x

    fns = {Site(LAYER, "attn.hook_z"): [add], Site(1, "hook_resid_post"): [lambda site, x: seen.append(x[0].float().cpu())]}
    with torch.no_grad(), hooked(model, fns):
        model.hf(torch.tensor([ids], device=model.device), use_cache=False)
    return seen[0]


def test_generation_under_the_default_shifts_the_last_token_of_each_forward(tiny):
    """KV-cached greedy generation under "last": the prompt's forward moves its last token only, and each step
    (one new token) moves; what every forward computes equals one uncached forward of the whole sequence with the
    shift at the prompt's last token and every generated token. Under "all": the shift at every position."""
    steer = _steer(tiny, alpha=8.0)
    offset = steer.offsets(tiny)[LAYER][HEAD]
    prompt = PROMPTS[1]
    ids = tiny.encode(tiny.prepare_prompts([prompt]))[0]
    P = len(ids)
    for s, start in ((steer, P - 1), (steer.at("all"), 0)):
        seen: list[torch.Tensor] = []
        with hooked(tiny, {Site(1, "hook_resid_post"): [lambda site, x: seen.append(x[0].float().cpu())]}):
            got = tiny.generate([prompt], max_new_tokens=5, interventions=[s], use_prefix_cache=False)[0]
        assert seen[0].shape[0] == P and all(x.shape[0] == 1 for x in seen[1:])  # the prompt, then one token a step
        fed = ids + list(got.ids)[:len(seen) - 1]
        want = _read_by_hand(tiny, offset, fed, start)
        plain = _read_by_hand(tiny, torch.zeros_like(offset), fed, 0)
        got_all = torch.cat(seen)
        assert torch.allclose(got_all, want, atol=1e-4), s.positions
        moved = (want - plain).abs().amax(-1) > 1e-4
        assert moved[start:].all() and not moved[:start].any(), s.positions
    for s in (steer, steer.at("all")):  # the prefix cache changes no token
        on = tiny.generate(PROMPTS, max_new_tokens=5, interventions=[s], use_prefix_cache=True)
        off = tiny.generate(PROMPTS, max_new_tokens=5, interventions=[s], use_prefix_cache=False)
        assert [c.ids for c in on] == [c.ids for c in off], s.positions
    assert registered_hooks(tiny) == 0


def test_prefix_rule_follows_the_positions_and_positions_are_saved(llama, tmp_path):
    steer = _steer(llama)
    assert rule(steer) == PrefixRule(tail=1, rows=False) and rule(steer.at("all")) == SAME_EVERYWHERE
    steer.save(tmp_path / "a")
    assert HeadSteering.load(tmp_path / "a").positions == "last"
    steer.at("all").save(tmp_path / "b")
    assert HeadSteering.load(tmp_path / "b").positions == "all"
    meta = json.loads((tmp_path / "a" / "head_steering.json").read_text())
    del meta["positions"]  # written before positions were recorded: it acted at every position
    (tmp_path / "a" / "head_steering.json").write_text(json.dumps(meta))
    assert HeadSteering.load(tmp_path / "a").positions == "all"
    with pytest.raises(InterpError, match="positions"):
        _steer(llama, positions="first")
    with pytest.raises(InterpError, match="positions"):
        T.TruthfulConfig(positions="last").check(llama, 20)


# ----- multiple choice: the answer's tokens only -----

PRE = "Interpret each question literally.\n\nQ: What is 2+2?\nA: 4.\n\n"
MC_PROMPTS = [PRE + "Q: What colour is the sky?\nA:", PRE + "Q: Where is Paris?\nA:"]
OPTIONS = [[" Blue.", " Green, mostly, on a clear day."], [" France.", " Germany is where it is."]]


def test_continuation_edits_shift_the_answer_tokens_only(tiny):
    steer = _steer(tiny)
    offset = steer.offsets(tiny)[LAYER][HEAD]
    edit = [steer.at("all")]
    cached = continuations(tiny, MC_PROMPTS, OPTIONS, continuation_edits=edit, use_prefix_cache=True)
    full = continuations(tiny, MC_PROMPTS, OPTIONS, continuation_edits=edit, use_prefix_cache=False)
    plain = continuations(tiny, MC_PROMPTS, OPTIONS, use_prefix_cache=False)
    for i, (p, opts) in enumerate(zip(MC_PROMPTS, OPTIONS)):
        start = len(tiny.encode([p])[0])
        for j, c in enumerate(opts):
            ids = tiny.encode([p + c])[0]
            lp = _by_hand(tiny, offset, ids, start).log_softmax(-1)  # the shift from the answer's first token on
            want = sum(float(lp[t - 1, ids[t]]) for t in range(start, len(ids)))
            assert abs(float(full.logprobs[i][j]) - want) < 1e-3 and abs(float(cached.logprobs[i][j]) - want) < 1e-3
            assert abs(float(full.logprobs[i][j]) - float(plain.logprobs[i][j])) > 1e-4  # the answer's later tokens moved

    # the activations: bit for bit the plain run before each row's answer, moved on the answer's tokens
    rows = _rows(tiny, MC_PROMPTS[:1], OPTIONS[:1])
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r].ids))  # the order `continuations` runs them in
    seen: list[torch.Tensor] = []
    read = {Site(1, "hook_resid_post"): [lambda site, x: seen.append(x.detach().float().cpu())]}
    with hooked(tiny, read):
        continuations(tiny, MC_PROMPTS[:1], OPTIONS[:1], use_prefix_cache=False)
        continuations(tiny, MC_PROMPTS[:1], OPTIONS[:1], use_prefix_cache=False, continuation_edits=edit)
    before, after = seen
    width = before.shape[1]
    for b, r in enumerate(order):
        first, answer = width - len(rows[r].ids), width - (len(rows[r].ids) - rows[r].start)  # pads come before `first`
        assert torch.equal(after[b, first:answer], before[b, first:answer])
        assert ((after[b, answer:] - before[b, answer:]).abs().amax(-1) > 1e-4).all()
    assert registered_hooks(tiny) == 0


def test_mc_eval_acts_where_the_positions_say(llama):
    """A one-token answer is predicted from the prompt's last token: under the reference's positions its
    score is the plain one exactly; shifting every position moves it."""
    q = Question("What colour is the sky?", "Blue", ("Blue",), ("Green, mostly, on a clear day.",))
    prompts, answers = T.mc_prompts(llama, [q], "qa")
    steer = _steer(llama, alpha=8.0)
    plain = continuations(llama, prompts, answers)
    last = continuations(llama, prompts, answers, continuation_edits=[steer.at("all")])
    with llama.intervene(steer.at("all")):
        every = continuations(llama, prompts, answers)
    n = continuations(llama, prompts, answers).n_tokens[0]
    one = [j for j in range(len(n)) if n[j] == 1]
    more = [j for j in range(len(n)) if n[j] > 1]
    assert one and more
    for j in one:
        assert float(last.logprobs[0][j]) == float(plain.logprobs[0][j])
        assert abs(float(every.logprobs[0][j]) - float(plain.logprobs[0][j])) > 1e-4
    assert T.mc_eval(llama, [q], steer) == T.mc_scores([q], last.logprobs)
    assert T.mc_eval(llama, [q], steer.at("all")) == T.mc_scores([q], every.logprobs)


def test_cost_is_measured_at_every_position_whatever_the_positions(llama):
    ref = T.Reference([llama.prepare_prompts(["Name a fruit."], chat=True)[0] + "An apple."])
    steer = _steer(llama, alpha=8.0)
    got = T.cost(llama, steer, ref)
    assert got == T.cost(llama, steer.at("all"), ref)
    ids = llama.encode(ref.texts)[0]
    p = _by_hand(llama, torch.zeros(llama.d_head), ids, 0).log_softmax(-1)
    q = _by_hand(llama, steer.offsets(llama)[LAYER][HEAD], ids, 0).log_softmax(-1)
    target = torch.tensor(ids[1:])[:, None]
    assert got["tokens"] == len(ids)
    assert abs(got["kl"] - float((p.exp() * (p - q)).sum()) / len(ids)) < 1e-4
    assert abs(got["ce_iti"] + float(q[:-1].gather(-1, target).sum()) / (len(ids) - 1)) < 1e-4
    assert abs(got["ce_baseline"] + float(p[:-1].gather(-1, target).sum()) / (len(ids) - 1)) < 1e-4


# ----- `interp truthful eval` leaves out the questions the intervention was fitted on -----

CSV_HEAD = "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
ROWS = [("What colour is the sky?", "Blue", "Blue", "Green"), ("Where is Paris?", "In France", "In France", "In Spain"),
        ("What do cats eat?", "Meat", "Meat", "Rocks"), ("Is ice cold?", "Yes", "Yes", "No")]


def _csv(path, rows=ROWS):
    path.write_text(CSV_HEAD + "".join(f"A,C,{q},{b},{c},{i},s\n" for q, b, c, i in rows))
    return path


def test_eval_leaves_out_fitted_questions_or_refuses(llama, monkeypatch, tmp_path):
    monkeypatch.setattr("interp.cli.common.load_model", lambda model, backend="hooks": llama)
    runner = CliRunner()
    csv = _csv(tmp_path / "q.csv")
    fitted = [ROWS[0][0], ROWS[2][0]]
    _steer(llama, provenance={"model": llama.fingerprint, "fitted_questions": fitted}).save(tmp_path / "iti")
    _steer(llama, provenance={"model": llama.fingerprint}).save(tmp_path / "old")
    _steer(llama, provenance={"model": llama.fingerprint, "fitted_questions": [r[0] for r in ROWS]}).save(tmp_path / "all")

    def ev(folder, *extra):
        out = tmp_path / f"{folder}{len(extra)}.json"
        r = runner.invoke(app, ["truthful", "eval", "--model", "tiny", "--intervention", str(tmp_path / folder),
                                "--questions", str(csv), "--n-cost", "1", "--out", str(out), *extra])
        return r, out

    r, out = ev("iti")
    assert r.exit_code == 0, r.output
    got = json.loads(out.read_text())
    assert got["n_questions"] == 2 and got["n_fitted_left_out"] == 2 and got["intervention"]["positions"] == "last"
    assert "2 left out" in r.output
    r, out = ev("iti", "--include-fitted")
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["n_questions"] == 4
    r, out = ev("old")
    assert r.exit_code != 0 and "does not record the questions" in str(r.exception) and not out.exists()
    assert "\n" not in str(r.exception) and "--include-fitted" in str(r.exception)
    r, out = ev("all")
    assert r.exit_code != 0 and "fitted on all 4 questions" in str(r.exception) and not out.exists()
    r, out = ev("iti", "--max-questions", "1")
    assert r.exit_code == 0 and json.loads(out.read_text())["n_questions"] == 1


def test_run_records_the_questions_and_positions(llama, tmp_path):
    qs = [Question(q, b + ".", (b + ".",), (i + ".",)) for q, b, _, i in ROWS]
    res = T.run(llama, qs, T.TruthfulConfig(heads=2, alpha=3.0, n_tune=1, n_cost=1, cost_tokens=3, n_examples=1))
    assert T.fitted_questions(res.final) == {q.question for q in qs} and res.final.positions == "last"
    assert all(f.steering.positions == "last" for f in res.folds)
    for f in res.folds:  # each fold's intervention names its training questions, never its held-out ones
        assert T.fitted_questions(f.steering) == {qs[i].question for i in range(4) if i not in f.test}
    s = res.summary()
    assert s["options"]["positions"] == "answer" and s["positions"].startswith("answer")
    res.save(tmp_path / "fit")
    back = HeadSteering.load(tmp_path / "fit")
    assert back.positions == "last" and T.fitted_questions(back) == {q.question for q in qs}
    every = T.run(llama, qs, T.TruthfulConfig(heads=2, alpha=3.0, n_tune=1, n_cost=1, cost_tokens=3, n_examples=0,
                                              positions="all"))
    assert every.final.positions == "all" and every.summary()["positions"].startswith("all")
