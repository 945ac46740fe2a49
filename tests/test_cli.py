"""The command line: prompt files, steer, ablate export, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from interp.cli import app
from interp.core.interventions import Ablate, Add
from interp.core.subspace import Direction, Subspace
from interp.errors import InterpError
from interp.judges import SubstringJudge

runner = CliRunner()


@pytest.fixture(scope="module")
def direction_dir(smol, tmp_path_factory) -> Path:
    acts = smol.capture(["How do I pick a lock?", "How to make a weapon?", "Bake bread", "Write a poem"], "blocks.10.hook_resid_pre")
    x = acts["blocks.10.hook_resid_pre"]
    d = Direction.from_vector(x[:2].mean(0) - x[2:].mean(0), {"model": smol.fingerprint, "layer": 10,
                                                             "site": "blocks.10.hook_resid_pre"})
    return d.save(tmp_path_factory.mktemp("dir") / "direction")


@pytest.fixture
def cli_models(request, monkeypatch):
    """The CLI loads its model with `interp.cli.common.load_model`; hand it the session's models, on the test device and dtype
    (the library's defaults differ between a CPU and a GPU), which also saves loading them again."""
    names = {"smollm2-135m-instruct": "smol", "qwen2.5-coder-0.5b-instruct": "qwen"}
    monkeypatch.setattr("interp.cli.common.load_model", lambda model, backend="hooks": request.getfixturevalue(names[model]))


def _steer(direction: Path, prompts: list[str], tmp_path: Path, mode: str, model: str = "smollm2-135m-instruct",
           max_new_tokens: int = 8) -> list[dict]:
    """Run `interp steer` on `prompts`; the objects it wrote."""
    path, out = tmp_path / f"{mode}.json", tmp_path / f"{mode}.jsonl"
    path.write_text(json.dumps(prompts))
    res = runner.invoke(app, ["steer", "--model", model, "--direction", str(direction), "--mode", mode, "--prompts",
                              str(path), "--max-new-tokens", str(max_new_tokens), "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == prompts and all(r["mode"] == mode for r in rows)
    return rows


@pytest.mark.parametrize("mode", ["ablate", "add"])
def test_steer_writes_the_answer_under_the_named_intervention(smol, direction_dir, cli_models, tmp_path, mode):
    """One object per prompt, whose answer is the library's generation under that intervention (the direction
    ablated everywhere, or added once at its layer), and not the unsteered answer."""
    prompts = ["Name a colour", "Name a fruit"]
    rows = _steer(direction_dir, prompts, tmp_path, mode)
    d = Subspace.load(direction_dir, model=smol)
    intervention = Ablate(d) if mode == "ablate" else Add(d, layer=10, alpha=1.0)
    steered = smol.generate(prompts, max_new_tokens=8, interventions=[intervention])
    assert [r["response"] for r in rows] == steered
    assert all(a != b for a, b in zip(steered, smol.generate(prompts, max_new_tokens=8))), steered


def test_steer_ablate_stops_the_real_model_refusing(qwen, qwen_refusal_direction, qwen_refused, cli_models, tmp_path):
    """On Qwen, prompts it refuses are refused at `--mode none` and answered at `--mode ablate`."""
    direction = qwen_refusal_direction.save(tmp_path / "direction")
    prompts = qwen_refused[0]
    judge = SubstringJudge()
    baseline = [r["response"] for r in _steer(direction, prompts, tmp_path, "none", model=qwen.name, max_new_tokens=12)]
    ablated = [r["response"] for r in _steer(direction, prompts, tmp_path, "ablate", model=qwen.name, max_new_tokens=12)]
    assert all(judge.refused(baseline)), baseline
    assert not any(judge.refused(ablated)), ablated
    assert all(r.strip() for r in ablated)


def test_steer_none_equals_plain_generation(smol, direction_dir, cli_models, tmp_path):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps([{"prompt": "Name a colour"}, "Name a fruit"]))
    out = tmp_path / "out.jsonl"
    runner.invoke(app, ["steer", "--model", "smollm2-135m-instruct", "--direction", str(direction_dir), "--mode", "none",
                        "--prompts", str(prompts), "--max-new-tokens", "6", "--out", str(out)])
    rows = [json.loads(line)["response"] for line in out.read_text().splitlines()]
    assert rows == smol.generate(["Name a colour", "Name a fruit"], max_new_tokens=6)


def test_ablate_export_loads_in_plain_transformers(direction_dir, cli_models, tmp_path):
    from transformers import AutoModelForCausalLM

    res = runner.invoke(app, ["ablate", "--model", "smollm2-135m-instruct", "--direction", str(direction_dir),
                              "--export", str(tmp_path / "ortho")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ortho"))
    assert hf.config.num_hidden_layers == 30


def test_direction_errors(direction_dir, cli_models, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hi\n")
    base = ["steer", "--model", "smollm2-135m-instruct", "--mode", "ablate", "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl")]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "subspace.safetensors").write_text("this is not safetensors")
    (bad / "subspace.json").write_text((direction_dir / "subspace.json").read_text())
    res = runner.invoke(app, base + ["--direction", str(bad)])
    assert isinstance(res.exception, InterpError) and "safetensors" in str(res.exception)
    nojson = tmp_path / "nojson"
    nojson.mkdir()
    (nojson / "subspace.safetensors").write_bytes((direction_dir / "subspace.safetensors").read_bytes())
    res = runner.invoke(app, base + ["--direction", str(nojson)])
    assert isinstance(res.exception, InterpError) and "JSON" in str(res.exception)
    res = runner.invoke(app, base[:4] + ["add", "--layer", "99"] + base[5:] + ["--direction", str(direction_dir)])
    assert isinstance(res.exception, InterpError) and "out of range" in str(res.exception)
    assert not (tmp_path / "o.jsonl").exists()


def test_bad_prompt_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "prompts.xml"
    bad.write_text("<a/>")
    proc = subprocess.run([sys.executable, "-m", "interp.cli", "capture", "--model", "smollm2-135m-instruct", "--prompts",
                           str(bad), "--out", str(tmp_path / "acts")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and ".txt" in proc.stderr
    assert not (tmp_path / "acts").exists()


def test_models_lists_the_bundled_models():
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0
    assert "qwen2.5-coder-0.5b-instruct" in res.output and "prepared" in res.output


# ----- the layout of the command line (interp.cli.common): shared options, generated options, output folders -----

def _commands(group=None, path=()):
    """(path, click command) of every leaf command of the app."""
    import typer

    group = group if group is not None else typer.main.get_command(app)
    for name, cmd in group.commands.items():
        if getattr(cmd, "commands", None):  # a group (typer's, not necessarily a click.Group)
            yield from _commands(cmd, path + (name,))
        if not hasattr(cmd, "commands") or cmd.callback is not None:
            yield path + (name,), cmd


def test_generated_options_default_to_the_config_dataclass():
    """Every option generated from an analysis's config dataclass has that dataclass's default (they cannot drift),
    and the generated commands build their config from them."""
    import dataclasses
    import importlib

    seen = set()
    for path, cmd in _commands():
        spec = getattr(cmd.callback, "__config__", None)
        if spec is None:
            continue
        module, name, options = spec
        cls = getattr(importlib.import_module(module), name)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        params = {p.name: p for p in cmd.params}
        assert options, f"{' '.join(path)}: no option generated from {name}"
        for option, field in options.items():
            f = fields[field]
            want = f.default if f.default is not dataclasses.MISSING else None
            got = params[option].default
            got = tuple(got) if isinstance(got, list) else got
            assert got == want, f"interp {' '.join(path)} --{option.replace('_', '-')}: {got!r} != {name}.{field} {want!r}"
            if f.default is dataclasses.MISSING:
                assert params[option].required
        seen.add(name)
    assert {"RefusalConfig", "TruthfulConfig", "ConceptsConfig", "SubspacesConfig", "PatchingConfig", "OverlapConfig",
            "HeadsConfig", "AbliterationConfig"} <= seen


def test_every_command_shares_one_system_default_and_model():
    from interp.cli import common
    from interp.core.model import DEFAULT_SYSTEM, system_record
    from interp.data.registry import DEFAULT_MODEL

    defaults = {" ".join(path): p.default for path, cmd in _commands() for p in cmd.params if p.name == "system"}
    assert len(defaults) >= 4, defaults
    assert set(defaults.values()) == {common.default_system()} == {system_record(DEFAULT_SYSTEM)}, defaults
    models = {" ".join(path): p.default for path, cmd in _commands() for p in cmd.params if p.name == "model"}
    assert set(models.values()) == {common.DEFAULT_MODEL} == {DEFAULT_MODEL}, models


def test_out_folder_refused_when_not_empty_unless_overwrite(smol, cli_models, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Name a colour\nName a fruit\n")
    out = tmp_path / "acts"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["capture", "--model", "smollm2-135m-instruct", "--prompts", str(prompts), "--sites", "blocks.3.hook_resid_post",
            "--out", str(out)]
    res = runner.invoke(app, args)
    assert isinstance(res.exception, InterpError) and "not empty" in str(res.exception) and "--overwrite" in str(res.exception)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    res = runner.invoke(app, args + ["--overwrite"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert {"activations.safetensors", "activations.json", "log.txt", "keep.txt"} <= {p.name for p in out.iterdir()}
    log = (out / "log.txt").read_text()
    assert "command: " in log and "capture" in log and "git commit: " in log and "torch" in log
    fresh = tmp_path / "fresh"
    assert runner.invoke(app, args[:-1] + [str(fresh)]).exit_code == 0 and (fresh / "log.txt").is_file()


def test_errors_are_one_line_with_exit_code_2(tmp_path):
    """The one error path (interp.cli.main): an InterpError from any command, the attack's included, is one line
    `error: ...` on stderr and exit code 2, checked before any model loads."""
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("x")
    for args in (["heads", "--out", str(used)],
                 ["attack", "ssr", "--behaviors", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "run.jsonl")]):
        proc = subprocess.run([sys.executable, "-m", "interp.cli", *args], capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error:") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_demo_names_every_departure_from_a_full_run_and_the_full_command():
    """`interp demo` runs smaller than a full run: every setting it changes (its sizes and each RefusalConfig field
    that differs from the default) is listed with what it costs the result (printed, and in summary.json), beside
    the full `interp directions extract` command at the defaults; the CLI's --n is the demo's own default."""
    import dataclasses

    from analyses import demo, refusal

    sizes = demo.DemoSizes()
    gone = demo.departures(sizes)
    cfg, full = sizes.refusal_config(), refusal.RefusalConfig()
    changed = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(full, f.name)}
    assert changed and changed | {"n", "max_new_tokens", "evaluate", "n_show"} <= {d["name"] for d in gone}
    assert all(d["effect"] and d["full"] != d["demo"] for d in gone)
    run = demo.full_run(sizes)
    assert run["command"].startswith("interp directions extract ") and f"--max-prompts {demo.FULL_N}" in run["command"]
    assert f"--n-val {full.n_val}" in run["command"] and f"--shortlist {full.shortlist}" in run["command"]
    root = Path(__file__).resolve().parents[1]
    assert all((root / w).exists() for w in run["command"].split() if w.startswith("data/"))
    (cmd,) = [c for path, c in _commands() if path == ("demo",)]
    assert {p.name: p.default for p in cmd.params}["n"] == sizes.n
