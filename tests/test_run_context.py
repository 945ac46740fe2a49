"""Issue 17: no hidden or global state. The forward's state is an explicit `Model.run_context`, set and restored by
context managers; the tokenizer is never changed; the system prompt is one typed value (`System`), one default
(`DEFAULT_SYSTEM`) in every signature, recorded in what is made with it."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import json
import pkgutil

import pytest
import torch

import interp
from interp.core.hooks import RunContext
from interp.core.interventions import Add
from interp.core.model import DEFAULT_SYSTEM, NO_SYSTEM, NoSystem, system_option, system_record
from interp.errors import InterpError
from tests.conftest import DEVICE
from tests.tiny import tiny_model

PROMPTS = ["Write a haiku about rain.", "Name a colour."]


@pytest.fixture(scope="module")
def tiny(tokenizer) -> interp.Model:
    return tiny_model("llama", tokenizer, DEVICE)


def _without_pad(tokenizer):
    tok = copy.deepcopy(tokenizer)  # the session's tokenizer stays as it is
    tok.pad_token = None
    assert tok.pad_token_id is None and tok.eos_token_id is not None
    return tok


def test_forward_state_is_an_explicit_attribute_and_restored(tiny):
    before = set(vars(tiny))
    assert isinstance(tiny.run_context, RunContext) and "_forward_state" not in before
    ctx = tiny.run_context
    add = Add(torch.zeros(tiny.d_model), 0)
    with tiny.intervene(add):
        assert tiny.run_context is ctx and ctx.active == [add]
        tiny.generate(PROMPTS[:1], max_new_tokens=2, use_prefix_cache=True)
    with pytest.raises(RuntimeError, match="body"):
        with tiny.intervene(add):
            raise RuntimeError("the body fails")
    assert set(vars(tiny)) == before and tiny.run_context is ctx  # nothing stashed on the model along the way
    assert ctx == RunContext()  # every field back to its resting value


def test_the_tokenizer_is_never_changed(tokenizer):
    tok = _without_pad(tokenizer)
    m = tiny_model("llama", tok, DEVICE)
    assert tok.pad_token is None and tok.pad_token_id is None  # Model(...) left it alone
    assert m.pad_id == tok.eos_token_id
    batch = m.tokenize(m.prepare_prompts(PROMPTS))
    short = int(batch.lengths.argmin())
    assert (batch.input_ids[short, : int((batch.attention_mask[short] == 0).sum())] == tok.eos_token_id).all()
    together = m.logits(PROMPTS, use_prefix_cache=False)
    alone = torch.cat([m.logits([p], use_prefix_cache=False) for p in PROMPTS])
    assert torch.allclose(together, alone, atol=1e-4)
    m.generate(PROMPTS, max_new_tokens=2)
    assert tok.pad_token is None


def test_loading_changes_no_tokenizer_and_no_process_wide_setting(tokenizer, tmp_path):
    """`interp.load` of a folder whose tokenizer has no pad token leaves it without one; transformers' progress
    bars are silenced for the load only (a process that had them on or off keeps them so), the logging verbosity
    is untouched."""
    from transformers.utils import logging as hf_logging

    tok = _without_pad(tokenizer)
    tiny_model("llama", tok).hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    was, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    try:
        for bars in (False, True):
            (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()
            m = interp.load(str(tmp_path), device=DEVICE, dtype=torch.float32)
            assert hf_logging.is_progress_bar_enabled() == bars and hf_logging.get_verbosity() == verbosity
            assert m.tokenizer.pad_token is None and m.pad_id == m.tokenizer.eos_token_id
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def test_system_is_one_typed_value_with_no_model_state(tiny):
    smol = tiny  # the SmolLM2 chat template, whose default system prompt names SmolLM
    assert not hasattr(smol, "with_system") and not hasattr(smol, "default_system")
    assert DEFAULT_SYSTEM is None  # the chat template's own system prompt (see interp.core.model.DEFAULT_SYSTEM)
    assert smol.format_chat("Hi") == smol.format_chat("Hi", DEFAULT_SYSTEM) == smol.format_chat("Hi", "default")
    assert smol.format_chat("Hi", "none") == smol.format_chat("Hi", NO_SYSTEM) != smol.format_chat("Hi")
    assert "Be brief." in smol.format_chat("Hi", "Be brief.")
    with pytest.raises(InterpError, match="system"):
        smol.format_chat("Hi", "")
    assert smol.format_chat("Hi") == smol.format_chat("Hi", DEFAULT_SYSTEM)  # a failed call changed nothing
    # the record is JSON, and reads back as the same value
    for value in (None, NO_SYSTEM, "Be brief."):
        record = json.loads(json.dumps(system_record(value)))
        assert system_option(record) == value and type(system_option(record)) is type(value)
    assert isinstance(copy.deepcopy(NO_SYSTEM), NoSystem) and json.dumps(NO_SYSTEM) == '"none"'


def test_activations_and_references_record_the_system(tiny, tmp_path):
    from interp.core.activations import Activations
    from interp.directions.scoring import reference_completions

    assert tiny.capture(PROMPTS, "blocks.0.hook_resid_post").system == "default"
    acts = tiny.capture(PROMPTS, "blocks.0.hook_resid_post", system="none")
    assert acts.system == "none" and acts.rows([0]).system == "none" and acts.layer(0).system == "none"
    assert Activations.load(acts.save(tmp_path / "a")).system == "none"
    assert tiny.capture(PROMPTS, "blocks.0.hook_resid_post", system="Be brief.").system == "Be brief."
    assert tiny.capture(PROMPTS, "blocks.0.hook_resid_post", chat=False).system is None  # raw prompts: no chat turn
    ref = reference_completions(tiny, PROMPTS[:1], n_tokens=2, system=NO_SYSTEM)
    assert ref.system == "none"
    assert ref.prompt_ids == tiny.encode(tiny.prepare_prompts(PROMPTS[:1], system=NO_SYSTEM))


def test_refusal_tokens_record_the_system(tiny):
    from interp.judges import RefusalScore

    class Refuses:  # a judge that calls every answer a refusal (a random tiny model answers alike)
        def refused(self, texts):
            return [True] * len(texts)

    rs = RefusalScore.fit(tiny, PROMPTS[:1], PROMPTS[1:], max_new_tokens=2, judge=Refuses(), system="none")
    assert rs.stats_["system"] == "none"


def _modules():
    import analyses

    names = []
    for pkg in (interp, analyses):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if not info.name.startswith("interp.cli"):  # the CLI takes option strings (system_record(DEFAULT_SYSTEM))
                names.append(info.name)
    return [importlib.import_module(n) for n in names]


def test_every_system_parameter_defaults_to_the_library_default():
    seen, bad = 0, []
    for mod in _modules():
        for name, obj in vars(mod).items():
            if getattr(obj, "__module__", None) != mod.__name__:
                continue
            members = [(name, obj)]
            if inspect.isclass(obj):
                members += [(f"{name}.{k}", getattr(v, "__func__", v)) for k, v in vars(obj).items()]
                if dataclasses.is_dataclass(obj):
                    for f in dataclasses.fields(obj):
                        if f.name == "system" and "System" in str(f.type):  # a config's option, not a Result's record
                            seen += 1
                            if f.default is not DEFAULT_SYSTEM:
                                bad.append(f"{mod.__name__}.{name}.system = {f.default!r}")
            for qual, fn in members:
                if not inspect.isfunction(fn) or (dataclasses.is_dataclass(obj) and qual.endswith(".__init__")):
                    continue  # a dataclass's fields are checked above (a Result's `system` is a record, a str)
                p = inspect.signature(fn).parameters.get("system")
                if p is None or p.default is inspect.Parameter.empty:
                    continue
                seen += 1
                if p.default is not DEFAULT_SYSTEM or "System" not in str(p.annotation):
                    bad.append(f"{mod.__name__}.{qual}(system: {p.annotation} = {p.default!r})")
    assert seen >= 20 and not bad, bad

