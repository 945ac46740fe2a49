"""Cross-backend verification: rerun every capture and every logits call on the other backends and record the
largest disagreement.

`with verifying(model) as check:` (or `verify(model, run)`, which also records the check in the Result that
`run` returns) reruns, inside the block, each `model.capture(...)` and `model.logits(...)` on a copy of the
model for every other backend (hooks, TransformerLens, nnsight), under the interventions active at that moment,
and compares the values: `check.max_abs_diff[backend]` is the largest absolute difference seen, `check.where` the
site (or "logits") it was seen at. A backend that refuses a call (a site it cannot hook, an edited output nnsight
cannot read) has the refusal recorded in `check.refused` instead of failing the run. Nothing else in the
analysis is rerun: fitted directions, probes and choices come from the model's own backend.

The copies hold their own weights (a deep copy of the HF model per backend: TransformerLens rewires the module
tree it is given), so the block needs memory for up to three models.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar

import torch

from interp.core.backends import BACKENDS
from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.core.activations import Activations
    from interp.core.model import Model

T = TypeVar("T")


@dataclass
class BackendCheck:
    """What `verifying` found. max_abs_diff / where: per other backend, the largest absolute difference from the
    model's own backend over every value compared, and the site (or "logits") where it was seen. compared: how
    many calls each backend reran. refused: per backend, the one-line reasons of the calls it refused."""

    backend: str
    others: tuple[str, ...]
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)
    compared: dict[str, int] = field(default_factory=dict)
    refused: dict[str, list[str]] = field(default_factory=dict)

    def _record(self, backend: str, name: str, diff: float) -> None:
        if diff > self.max_abs_diff.get(backend, -1.0):
            self.max_abs_diff[backend], self.where[backend] = diff, name

    def to_json(self) -> dict:
        return {"backend": self.backend, "others": list(self.others), "max_abs_diff": self.max_abs_diff,
                "where": self.where, "compared": self.compared, "refused": self.refused}


class _Verifier:
    """Held in `model.run_context.verifier` while a `verifying` block runs; capture and logits call it."""

    def __init__(self, model: "Model", others: dict[str, "Model"], check: BackendCheck):
        self.model, self.others, self.check = model, others, check

    def _each(self, call: Callable[["Model"], Any], compare: Callable[[str, Any], None]) -> None:
        active = list(self.model.run_context.active)
        for name, other in self.others.items():
            try:
                with other.intervene(*active):
                    got = call(other)
            except InterpError as e:
                reasons = self.check.refused.setdefault(name, [])
                if str(e) not in reasons:
                    reasons.append(str(e))
                continue
            compare(name, got)
            self.check.compared[name] = self.check.compared.get(name, 0) + 1

    def capture(self, acts: "Activations", kwargs: dict) -> None:
        def compare(name: str, got: "Activations") -> None:
            for site, x in acts.acts.items():
                self.check._record(name, site, float((got[site] - x).abs().max()) if x.numel() else 0.0)

        self._each(lambda m: m.capture(**{**kwargs, "progress": False}), compare)

    def logits(self, logits: torch.Tensor, kwargs: dict) -> None:
        self._each(lambda m: m.logits(**kwargs),
                   lambda name, got: self.check._record(name, "logits", float((got - logits).abs().max())))


def _twin(model: "Model", backend: str) -> "Model":
    from interp.core.model import Model

    return Model(copy.deepcopy(model.hf), model.tokenizer, model.name, backend=backend, source=model.source,
                 family=model.family)


@contextmanager
def verifying(model: "Model", backends: Sequence[str] | None = None) -> Iterator[BackendCheck]:
    """Inside the block, every capture and logits call of `model` is rerun on `backends` (default: the two
    backends other than the model's own) and compared; yields the `BackendCheck` it fills. Raises InterpError
    for an unknown backend, the model's own backend, or a nested block."""
    own = model.backend.name
    others = tuple(b for b in BACKENDS if b != own) if backends is None else tuple(backends)
    for b in others:
        if b not in BACKENDS or b == own:
            raise InterpError(f"verify against backends other than the model's own ({own}): choose from "
                              f"{', '.join(x for x in BACKENDS if x != own)}, got {b!r}")
    if model.run_context.verifier is not None:
        raise InterpError("a verifying block is already running for this model; nest none")
    check = BackendCheck(own, others)
    model.run_context.verifier = _Verifier(model, {b: _twin(model, b) for b in others}, check)
    try:
        yield check
    finally:
        model.run_context.verifier = None


def verify(model: "Model", run: Callable[[], T], backends: Sequence[str] | None = None) -> T:
    """`run()` inside `verifying(model, backends)`; when it returns a `Result`, the check is recorded in it
    (`result.backend_check`, shown in its summary, report and JSON)."""
    from interp.core.result import Result

    with verifying(model, backends) as check:
        result = run()
    if isinstance(result, Result):
        result.backend_check = check.to_json()
    return result
