"""What every command shares: the common options, options generated from an analysis's config dataclass, the
output-folder convention and the model loader.

Shared options (defined once, here): --model, --out, --batch-size, --system, --seed, --device, --dtype, --overwrite.

Generated options (`config_options`): one option per field of an analysis's `<Analysis>Config` dataclass, named
--kebab-case, with the dataclass's default and, as help, the field's `metadata={"help": ...}` or the comment on
its line. The dataclass is read from its source (`ast`), not imported, so `interp --help` does not import the
analyses (torch, plotly, scikit-learn, optuna...); tests/test_cli.py checks every generated default against the
imported dataclass, so the two cannot drift. The command receives the built config instance.

Output convention (`check_out`, `write_log`): `--out` is a folder holding result.json, report.html (where the
analysis has figures), its artifacts and log.txt (the command line, the git commit, the versions). A non-empty
existing folder is refused with a one-line error unless --overwrite; nothing is created before the inputs are
checked and the work is done. Exceptions: `interp attack` resumes from its existing log (`--out` is its JSONL log)
and commands that write one file (steer, truthful eval, concepts steer, directions export-gguf) take --out FILE.

Resumable commands (`truthful fit`, `directions search`, `concepts fit`, `patch`: `ResumableOut`) record their
progress in `--out` as they go (`interp.core.progress`: progress.jsonl and other progress.* files). Their `--out`
may also be a folder holding nothing but progress.* files (an interrupted run): the command resumes it when it
was recorded with the same settings and refuses it in one line otherwise. With --overwrite, a non-empty folder
is accepted, a recorded run with the same settings is still resumed (it ends with the same result) and one
with other settings is started over. The progress files are removed once the results are written.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import json
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from interp.errors import InterpError

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"  # interp.data.registry.DEFAULT_MODEL (checked by tests/test_cli.py)


def default_system() -> str:
    """The one --system default of every command: the library's `DEFAULT_SYSTEM` as its option string
    ("default" | "none" | text). interp.core.system is light (no torch)."""
    from interp.core.system import DEFAULT_SYSTEM, system_record

    return system_record(DEFAULT_SYSTEM)


# ----- shared options: one definition each (typer copies an OptionInfo for every command that uses it) -----

Model = typer.Option(DEFAULT_MODEL, "--model", help="bundled name, HF folder or .gguf")
Out = typer.Option(..., "--out", help="output folder: result.json, report.html, artifacts, log.txt (new or empty "
                   "unless --overwrite)")
ResumableOut = typer.Option(..., "--out", help="output folder: result.json, report.html, artifacts, log.txt; the run "
                            "records its progress there (progress.* files) as it goes. New or empty, or holding only "
                            "the progress.* files of an interrupted run, which is resumed when it had the same "
                            "settings (other settings are refused unless --overwrite, which starts over)")
Overwrite = typer.Option(False, "--overwrite", help="write into a non-empty --out folder (its files are replaced)")
BatchSize = typer.Option(None, "--batch-size", help="prompts per forward (default: the analysis's own)")
System = typer.Option(default_system(), "--system", help="none (no system turn) | default (the chat template's own) "
                      "| any other text as the system prompt; the default is the library's DEFAULT_SYSTEM")
Seed = typer.Option(None, "--seed", help="random seed (default: the analysis's own, 0)")
Device = typer.Option(None, "--device", help="cpu | cuda | cuda:N (default: the GPU when there is one)")
Dtype = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 (default: fp32 on a CPU, bf16 on a GPU)")

SHARED_FIELDS = ("batch_size", "seed", "system")  # config fields filled from the shared options, when given


def system_value(spec: str):
    """Parse a --system value with the library's parser (a bad value fails before the model loads)."""
    from interp.core.system import system_option

    return system_option(spec)


# ----- the model -----

def load_model(name: str, backend: str = "hooks", **options: Any):
    """Every command loads its model here (tests replace this function)."""
    import interp

    return interp.load(name, backend=backend, **options)


def load(name: str, device: str | None = None, dtype: str | None = None, backend: str = "hooks"):
    """`load_model` with --device and --dtype passed on only when given."""
    options = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    return load_model(name, backend=backend, **options)


# ----- the output folder -----

def check_out(out: Path, overwrite: bool = False, resumable: bool = False) -> Path:
    """Refuse an --out that is a file, or a non-empty folder without --overwrite; creates nothing. `resumable`: a
    folder holding only progress.* files (an interrupted run of a resumable command) is accepted too."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InterpError(f"--out {out} is a file; give a folder (it will hold result.json, report.html, log.txt)")
    if out.is_dir() and not overwrite:
        if resumable:
            from interp.core.progress import is_progress_file

            if any(not is_progress_file(p) for p in out.iterdir()):
                raise InterpError(f"--out {out} exists and is not empty (it holds more than the progress.* files of an "
                                  "interrupted run, which would be resumed); choose a new folder or pass --overwrite")
        elif any(out.iterdir()):
            raise InterpError(f"--out {out} exists and is not empty; choose a new folder or pass --overwrite")
    return out


def checkpoint(out: Path, overwrite: bool = False):
    """The `checkpoint` a resumable command passes its analysis: --out itself (`check_out(..., resumable=True)`
    first); a recorded run of other settings is refused, or started over with --overwrite. Says when it resumes."""
    from interp.core.progress import LOG, Checkpoint

    if (Path(out) / LOG).is_file():
        typer.echo(f"found the progress of an interrupted run in {Path(out) / LOG}: resuming it if its settings "
                   f"match{' (else starting over: --overwrite)' if overwrite else ''}", err=True)
    return Checkpoint(Path(out), "restart" if overwrite else "refuse")


def finish(out: Path) -> None:
    """Remove the progress.* files of a resumable command's --out once its results are written."""
    from interp.core.progress import remove

    remove(out)


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("interp", "torch", "transformers", "typer"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _current_context():
    """The running command's click context (typer >= 0.2x vendors click as typer._click; older typer uses click)."""
    for name in ("typer._click.globals", "click.globals"):
        try:
            ctx = importlib.import_module(name).get_current_context(silent=True)
        except ImportError:
            continue
        if ctx is not None:
            return ctx
    return None


def write_log(out: Path) -> Path:
    """log.txt in the output folder: what was run (command and its parsed options), the git commit, the versions."""
    ctx = _current_context()
    params = {k: str(v) if isinstance(v, Path) else v for k, v in (ctx.params if ctx else {}).items()}
    lines = [f"command: {ctx.command_path if ctx else 'interp'}",
             f"argv: {shlex.join(sys.argv)}",
             f"options: {json.dumps(params, default=str, sort_keys=True)}",
             f"git commit: {_git_commit()}",
             f"versions: {json.dumps(_versions())}",
             f"machine: {platform.platform()}"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "log.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ----- options generated from a config dataclass -----

@dataclasses.dataclass(frozen=True)
class ConfigField:
    """One field of a config dataclass as the command line sees it."""

    name: str  # the field's name
    option: str  # the command's parameter name (the field's, or a rename)
    annotation: Any  # the typer annotation: int, float, str, bool, Optional[...], List[...]
    default: Any  # the dataclass default (a tuple becomes a list); ... when the field has none
    help: str
    many: bool  # a tuple field: a repeatable option


_SCALARS = {"int": int, "float": float, "str": str, "bool": bool}
# the repeatable options' types, spelt with typing.List as the option declarations are
_LISTS = {"int": List[int], "float": List[float], "str": List[str], "bool": List[bool]}  # noqa: UP006
_UNSUPPORTED = object()  # a default the command line cannot show (default_factory, a call, an imported name)


def _cli_type(annotation: str) -> tuple[Any, bool] | None:
    """(typer annotation, repeatable) for a field's annotation text; None for types the command line has no
    option for (fixed-length tuples, nested values, objects)."""
    parts = [p.strip() for p in annotation.split("|")]
    optional = "None" in parts
    parts = [p for p in parts if p != "None"]
    if len(parts) != 1:
        return None
    text = parts[0]
    many = text.startswith("tuple[") and text.endswith(", ...]")
    inner = text[len("tuple["):-len(", ...]")] if many else text
    if inner not in _SCALARS:
        return None
    t: Any = _LISTS[inner] if many else _SCALARS[inner]
    return (Optional[t] if optional else t), many


def _module_constants(tree: ast.Module) -> dict[str, Any]:
    """Module-level NAME = literal assignments (for defaults such as `methods = FITTED`)."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError):
                pass
    return out


def _default(node: ast.expr | None, constants: dict[str, Any]) -> tuple[Any, str | None]:
    """(default, help from metadata) of a field's right-hand side; default ... when it has none, and
    `_UNSUPPORTED` when it is not a literal (default_factory, a call, an imported name)."""
    if node is None:
        return ..., None
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "field":
        kw = {k.arg: k.value for k in node.keywords}
        meta = ast.literal_eval(kw["metadata"]) if "metadata" in kw else {}
        default = _default(kw.get("default"), constants)[0] if "default" in kw else (
            _UNSUPPORTED if "default_factory" in kw else ...)
        return default, meta.get("help")
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id], None
    try:
        return ast.literal_eval(node), None
    except (ValueError, TypeError, SyntaxError):
        return _UNSUPPORTED, None


@functools.cache
def config_fields(module: str, name: str) -> tuple[ConfigField, ...]:
    """The fields of dataclass `name` in `module` that the command line can set, read from the source."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise InterpError(f"no module {module}")
    source = Path(spec.origin).read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source)
    constants = _module_constants(tree)
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    out = []
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        kind = _cli_type(ast.unparse(node.annotation))
        default, help_text = _default(node.value, constants)
        if kind is None or default is _UNSUPPORTED:
            continue
        annotation, many = kind
        if help_text is None:  # the comment on the field's line
            line = lines[node.lineno - 1]
            help_text = line.split("  # ", 1)[1].strip() if "  # " in line else ""
        if many and isinstance(default, tuple):
            default = list(default)
        out.append(ConfigField(node.target.id, node.target.id, annotation, default, help_text, many))
    return tuple(out)


def _flag(f: ConfigField) -> str:
    name = f.option.replace("_", "-")
    return f"--{name}/--no-{name}" if f.annotation in (bool, Optional[bool]) else f"--{name}"


def config_options(module: str, name: str, *, skip: tuple[str, ...] = (), rename: dict[str, str] | None = None,
                   help: dict[str, str] | None = None) -> Callable[[Callable], Callable]:
    """Decorate a command whose function takes `config`: the command gets one --option per field of the config
    dataclass `module.name` (except `skip` and the shared ones, `SHARED_FIELDS`), and the function is called with
    `config=` the dataclass built from them, plus the shared --batch-size/--seed/--system where the config has
    such fields and the command declares them. `rename`: field -> option name (e.g. candidate_layers -> layer);
    `help`: field -> help text replacing the source comment."""
    rename, help = rename or {}, help or {}

    def decorate(func: Callable) -> Callable:
        signature = inspect.signature(func, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "config"]
        names = {p.name for p in own}
        fields = [dataclasses.replace(f, option=rename.get(f.name, f.name), help=help.get(f.name, f.help))
                  for f in config_fields(module, name) if f.name not in skip and f.name not in SHARED_FIELDS]
        clash = [f.option for f in fields if f.option in names]
        if clash:
            raise TypeError(f"{func.__name__}: options {clash} are both declared and generated from {name}")
        generated = [inspect.Parameter(f.option, inspect.Parameter.KEYWORD_ONLY, annotation=f.annotation,
                                       default=typer.Option(f.default, _flag(f), help=f.help)) for f in fields]

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            values = {}
            for f in fields:
                v = kwargs.pop(f.option)
                if f.many:  # a repeatable option: none given -> the dataclass default
                    v = tuple(v) if v else (None if f.default is None else tuple(f.default))
                values[f.name] = v
            cls = getattr(importlib.import_module(module), name)
            declared = {f.name for f in dataclasses.fields(cls)}
            for shared in SHARED_FIELDS:
                if shared in declared and kwargs.get(shared) is not None:
                    values[shared] = kwargs[shared]
            return func(config=cls(**values), **kwargs)

        wrapper: Any = command  # a function object that takes the attributes typer and the tests read
        wrapper.__signature__ = signature.replace(parameters=own + generated)
        wrapper.__annotations__ = {p.name: p.annotation for p in own + generated
                                   if p.annotation is not inspect.Parameter.empty}
        wrapper.__config__ = (module, name, {f.option: f.name for f in fields})  # for tests/test_cli.py
        return wrapper

    return decorate
