"""Resumable runs: an analysis records each finished unit of work as it goes, so a run killed part way resumes
where it stopped and ends with the same Result as an uninterrupted one.

A long analysis splits its work into units (a chunk of questions, a grid point, a fold, a chunk of a patching
sweep, a judged point) and runs each through `Progress.unit` (or `Progress.chunks` for a list cut into chunks).
Given a checkpoint folder, every finished unit is appended to `progress.jsonl` there as one JSON line, flushed
and fsynced; the unit's tensors, if its value holds any, are written first (atomically, safetensors, never
pickle) to `progress.<n>.safetensors`, so a line on disk means its unit is complete. A rerun with the same
folder reads the finished units back and computes only the others. A last line cut short by a kill is dropped.

The first line records the run's settings (which analysis, its config, the model, digests of the data) and
their fingerprint. A folder recorded with other settings is refused with a one-line error naming what differs
(`Checkpoint(other_settings="restart")` removes its progress files and starts over instead). Nothing is written
before the first unit finishes, so a run that fails on its inputs leaves no file.

Exactness: a unit's value is always what its record holds, with or without a checkpoint (its JSON part goes
through a JSON round trip: tuples come back as lists, dict keys must be strings; its tensors come back
detached, on the CPU), so a resumed run and an uninterrupted one continue from the same values.

Every file of a run is named `progress.*` (`is_progress_file`), so the files of an interrupted run can be told
apart from results (the command line's `--out` rule, `interp.cli.common.check_out`) and removed (`remove`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from interp.errors import InterpError
from interp.io import append_jsonl, read_tensors, write_tensors

PREFIX = "progress."  # every file of a run's progress begins with this
LOG = "progress.jsonl"  # the record of finished units, in the checkpoint folder
FORMAT = "interp.core.progress/1"
OTHER_SETTINGS = ("refuse", "restart")
_TENSOR = "__tensor__"  # marks where a tensor of the unit's value sits in its JSON

T = TypeVar("T")


@dataclass(frozen=True)
class Checkpoint:
    """The folder a resumable run records its progress in, and what to do with a record of other settings:
    "refuse" (a one-line InterpError) or "restart" (its progress files are removed when the first unit finishes)."""

    directory: Path
    other_settings: str = "refuse"


def is_progress_file(path: Path) -> bool:
    return path.name.startswith(PREFIX) and path.is_file()


def progress_files(directory: str | os.PathLike) -> list[Path]:
    """The progress files in `directory` (none when it does not exist)."""
    directory = Path(directory)
    return sorted(p for p in directory.iterdir() if is_progress_file(p)) if directory.is_dir() else []


def remove(directory: str | os.PathLike) -> None:
    """Remove the progress files of `directory` (a finished run's, or one started over); nothing else."""
    for p in progress_files(directory):
        p.unlink()


# ----- settings -----

def canonical(obj: Any, depth: int = 0) -> Any:
    """`obj` as plain JSON values, for settings and digests: dataclasses and objects by their fields (and type
    name), tensors by a sha256 of their bytes with shape and dtype, tuples as lists, other values by repr."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous()
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        return {"tensor": hashlib.sha256(data).hexdigest(), "shape": list(t.shape), "dtype": str(t.dtype)}
    if isinstance(obj, dict):
        return {str(k): canonical(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [canonical(v, depth + 1) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((canonical(v, depth + 1) for v in obj), key=repr)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and not hasattr(obj, "__dict__"):  # numpy scalars
        return canonical(obj.item(), depth)
    if depth < 6:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
            return {"type": type(obj).__name__, **canonical(fields, depth + 1)}
        if hasattr(obj, "__dict__") and not isinstance(obj, type):
            return {"type": type(obj).__name__, **canonical(vars(obj), depth + 1)}
    return repr(obj)


def digest(obj: Any) -> str:
    """A sha256 of `canonical(obj)` (e.g. of an analysis's input data, for its settings)."""
    text = json.dumps(canonical(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_settings(model: Any) -> dict:
    """What of a model a run's results depend on: its fingerprint, dtype, device type and a digest of the first
    rows of its input embedding (two random models of one name and shape differ there)."""
    emb = model.hf.get_input_embeddings().weight
    return {**model.fingerprint, "dtype": str(model.dtype), "device": torch.device(model.device).type,
            "embedding": digest(emb[:4])}


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


# ----- values <-> records -----

def _encode(value: Any, tensors: dict[str, Tensor]) -> Any:
    """`value` as JSON with each tensor replaced by {"__tensor__": name} and put in `tensors`."""
    if isinstance(value, Tensor):
        name = str(len(tensors))
        tensors[name] = value.detach().cpu().clone()
        return {_TENSOR: name}
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad or _TENSOR in value:
            raise TypeError(f"a unit's dict keys must be strings other than {_TENSOR!r}, got {(bad or [_TENSOR])[0]!r}")
        return {k: _encode(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, tensors) for v in value]
    return value


def _decode(value: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            return tensors[value[_TENSOR]]
        return {k: _decode(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


def _fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


# ----- the record -----

class Progress:
    """The finished units of one run (see the module docstring). `Progress.open(None, ...)` records nothing and
    computes every unit (with the same round trip, so its values equal a recorded run's).

    `computed` and `reused` count the units computed by this process and those read back."""

    def __init__(self, directory: Path | None, analysis: str, settings: dict, units: dict[str, dict] | None = None,
                 restart: bool = False, lines: int = 1) -> None:
        self.directory, self.analysis, self.settings = directory, analysis, settings
        self.fingerprint = digest(settings)
        self._units: dict[str, dict] = dict(units or {})
        self._started = units is not None  # the record exists with these settings
        self._restart = restart
        self._next = lines  # the index of the next line (the header is line 0): names its tensors' file
        self.computed = self.reused = 0

    @property
    def path(self) -> Path | None:
        return None if self.directory is None else self.directory / LOG

    @classmethod
    def open(cls, checkpoint: str | os.PathLike | Checkpoint | None, analysis: str, settings: dict) -> "Progress":
        """The progress of `analysis` with `settings` in `checkpoint` (a folder, or a `Checkpoint`; None: record
        nothing). Raises InterpError when the folder holds progress of another analysis or other settings (unless
        `other_settings="restart"`), or a corrupt record."""
        settings = canonical(settings)
        if checkpoint is None:
            return cls(None, analysis, settings)
        cp = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(Path(checkpoint))
        if cp.other_settings not in OTHER_SETTINGS:
            raise InterpError(f"other_settings must be one of {', '.join(OTHER_SETTINGS)}, got {cp.other_settings!r}")
        directory = Path(cp.directory)
        if directory.exists() and not directory.is_dir():
            raise InterpError(f"checkpoint {directory} is a file; give a folder for the run's progress")
        path = directory / LOG
        lines, end = _read(path)
        if not lines:
            return cls(directory, analysis, settings, restart=True)
        head = lines[0]
        if not (isinstance(head, dict) and head.get("format") == FORMAT):
            raise InterpError(f"{path} is not a progress record of interp (no format {FORMAT!r} on its first line); "
                              "move it away")
        mine = cls(directory, analysis, settings)
        if head.get("analysis") != analysis or head.get("fingerprint") != mine.fingerprint:
            if cp.other_settings == "restart":
                return cls(directory, analysis, settings, restart=True)
            raise InterpError(_mismatch(path, head, analysis, settings))
        units: dict[str, dict] = {}
        for number, record in enumerate(lines[1:], 2):
            if not (isinstance(record, dict) and isinstance(record.get("unit"), str) and "value" in record):
                raise InterpError(f"{path}, line {number}: not a unit record; the file is corrupt, remove it to start over")
            units.setdefault(record["unit"], record)
        if end < path.stat().st_size:  # a last line cut short by a kill: dropped before anything is appended
            with path.open("r+b") as f:
                f.truncate(end)
        return cls(directory, analysis, settings, units, lines=len(lines))

    def done(self, key: str) -> bool:
        return key in self._units

    def __len__(self) -> int:
        """The finished units (read back or computed)."""
        return len(self._units)

    def file(self, name: str) -> Path | None:
        """The path of another file of this run's progress (e.g. an Optuna study), `progress.<name>` in the folder,
        after the record is started (None without a checkpoint)."""
        if self.directory is None:
            return None
        self._start()
        return self.directory / f"{PREFIX}{name}"

    def unit(self, key: str, compute: Callable[[], T]) -> T:
        """The value of unit `key`: read back when it finished before, else `compute()`d and recorded. The value
        is JSON-able, with tensors anywhere in it (see the module docstring for the round trip)."""
        record = self._units.get(key)
        if record is not None:
            self.reused += 1
            return _decode(record["value"], self._tensors(record))
        tensors: dict[str, Tensor] = {}
        encoded = json.loads(json.dumps(_encode(compute(), tensors)))
        record = {"unit": key, "value": encoded}
        if self.directory is not None:
            self._start()
            if tensors:
                name = f"{PREFIX}{self._next}.safetensors"
                write_tensors(self.directory / name, tensors)
                _fsync(self.directory / name)
                record["tensors"] = name
            append_jsonl(self.directory / LOG, record)
        self._next += 1
        self._units[key] = record
        self.computed += 1
        return _decode(encoded, tensors)

    def chunks(self, key: str, items: Sequence, size: int, compute: Callable[[list], T], desc: str,
               unit: str = "item") -> list[T]:
        """`compute` of each chunk of `size` consecutive `items`, each chunk the unit f"{key}/{i}", in order, with a
        progress bar over the items (starting at those already done)."""
        parts = [list(items[s:s + size]) for s in range(0, len(items), size)]
        keys = [f"{key}/{i}" for i in range(len(parts))]
        done = sum(len(p) for k, p in zip(keys, parts) if k in self._units)
        out: list[T] = []
        with tqdm(total=len(items), initial=done, desc=desc, unit=unit) as bar:
            for k, part in zip(keys, parts):
                fresh = k not in self._units
                out.append(self.unit(k, functools.partial(compute, part)))
                if fresh:
                    bar.update(len(part))
        return out

    def _tensors(self, record: dict) -> dict[str, Tensor]:
        name = record.get("tensors")
        if name is None:
            return {}
        assert self.directory is not None  # a record read back has a folder
        path = self.directory / name
        if not path.is_file():
            raise InterpError(f"{path} is missing, but {self.directory / LOG} records unit {record['unit']!r} with it; "
                              "the progress is incomplete: remove its progress.* files to start over")
        return read_tensors(path)

    def _start(self) -> None:
        """Write the header line (first removing a discarded record's files) before the first unit is recorded."""
        if self._started or self.directory is None:
            return
        if self._restart:
            remove(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.directory / LOG, {"format": FORMAT, "analysis": self.analysis,
                                           "fingerprint": self.fingerprint, "settings": self.settings})
        self._started = True


def _read(path: Path) -> tuple[list[Any], int]:
    """The JSON values of the complete lines of `path` and the byte length they span (a last line without its
    newline, cut short by a kill, is left out)."""
    if not path.is_file():
        return [], 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    out = []
    for number, line in enumerate(data[:end].split(b"\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InterpError(f"{path}, line {number}: not valid JSON ({e}); the progress record is corrupt: remove "
                              "its progress.* files to start over") from e
    return out, end


def _mismatch(path: Path, head: dict, analysis: str, settings: dict) -> str:
    if head.get("analysis") != analysis:
        return (f"{path} holds the progress of a {head.get('analysis')!r} run, not {analysis!r}; give another folder, "
                "or remove its progress.* files to start over")
    old, new = _flat(head.get("settings") or {}), _flat(settings)
    differ = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    shown = ", ".join(differ[:4]) + (f" and {len(differ) - 4} more" if len(differ) > 4 else "")
    return (f"{path} holds the progress of an interrupted {analysis} run with other settings (differing: "
            f"{shown or 'the fingerprint'}); rerun with its settings to resume it, or start over (remove its "
            "progress.* files, or pass --overwrite on the command line)")
