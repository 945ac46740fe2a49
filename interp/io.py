"""Safe file I/O: atomic writes, and loaders for safetensors + JSON that fail with clear messages.

Nothing here ever unpickles. Every writer goes to a temporary file in the same folder and renames it, so a
crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from interp.errors import InterpError


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the body succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or ".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; results are ordinary shareable files
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InterpError(f"missing JSON file {path}: expected the JSON sidecar written beside the tensors")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InterpError(f"{path} is not valid JSON ({e}); the file is truncated or corrupt, write it again") from e


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise InterpError(f"missing tensor file {path}: expected a .safetensors file")
    with path.open("rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise InterpError(f"{path} is not a safetensors file (too short); it is truncated or of another format")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise InterpError(
            f"{path} is not a readable safetensors file ({e}); it is truncated, corrupt or of another format "
            "(pickled .pt/.bin files are never loaded)"
        ) from e


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON object as a line and flush it to disk: an append-only log loses no finished record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(obj, default=_json_default) + "\n"
    with path.open("a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def jsonl_lines(path: str | os.PathLike, text: str | None = None, torn_tail_ok: bool = False,
                hint: str = "write one JSON object per line") -> list[tuple[int, Any]]:
    """(line number, value) of every non-blank line of a JSONL file (or of `text` read from it); a line that is
    not JSON is an error naming the line, except a torn last line where `torn_tail_ok` (a run killed mid-write)."""
    lines = (Path(path).read_text(encoding="utf-8") if text is None else text).splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append((i + 1, json.loads(line)))
        except json.JSONDecodeError as e:
            if torn_tail_ok and i == len(lines) - 1:
                break
            raise InterpError(f"{path}, line {i + 1}: not valid JSON ({e.msg}); {hint}") from e
    return rows


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL log, ignoring a torn last line (a run killed mid-write)."""
    if not Path(path).exists():
        return []
    return [value for _, value in jsonl_lines(path, torn_tail_ok=True, hint="the log is corrupt")]


def read_meta(directory: Path, meta: str, tensors: str, fmt: str, what: str) -> dict:
    """The JSON sidecar of a saved artifact folder, checked to be of format `fmt` (e.g. "interp.core.subspace/1")."""
    if not directory.is_dir():
        raise InterpError(f"{what} directory {directory} does not exist; expected a folder with {tensors} and {meta}")
    obj = read_json(directory / meta)
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise InterpError(f"{directory / meta} is not an interp {what} file (missing format {fmt!r})")
    return obj


def read_artifact(directory: Path, meta: str, tensors: str, fmt: str, what: str,
                  fields: Sequence[str]) -> tuple[dict, dict[str, torch.Tensor]]:
    """A saved artifact folder's JSON sidecar (checked as `read_meta` does) and its tensors, which must hold `fields`."""
    obj = read_meta(directory, meta, tensors, fmt, what)
    got = read_tensors(directory / tensors)
    missing = [f for f in fields if f not in got]
    if missing:
        raise InterpError(f"{directory / tensors} lacks {', '.join(missing)} (has {sorted(got)}); it is not a {what} file")
    return obj, got
