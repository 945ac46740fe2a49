"""The system prompt: one typed value (`System`) and one library-wide default (`DEFAULT_SYSTEM`).

Every function that chat-formats prompts takes `system: System = DEFAULT_SYSTEM` (`interp.core.model.Model.format_chat`
renders it); nothing keeps a system prompt as state. Re-exported by `interp.core.model`.
"""

from __future__ import annotations

from interp.errors import InterpError


class NoSystem(str):
    """The `system` value that renders no system turn at all (see `Model.format_chat`). A str equal to its option
    string "none", so configs and provenance that hold it serialise (JSON, TOML) as "none" and read back the same."""

    def __new__(cls) -> "NoSystem":
        return super().__new__(cls, "none")

    def __reduce__(self):
        return (NoSystem, ())

    def __repr__(self) -> str:
        return "NO_SYSTEM"


NO_SYSTEM = NoSystem()


System = str | None | NoSystem
"""The one system-prompt value every signature takes (`system: System = DEFAULT_SYSTEM`):

- None: the chat template's own system turn, i.e. whatever the template renders when no system message is
  given (Qwen's inserts "You are Qwen, created by Alibaba Cloud. ..."; a template without one renders none);
- NO_SYSTEM: no system turn at all (Arditi et al.'s setting; `Model._without_system`);
- any other text: that text as the system message.

User-facing options and provenance use the strings "default" | "none" | text (`system_option` parses them,
`system_record` writes them).
"""

DEFAULT_SYSTEM: System = None
"""The library-wide (and CLI-wide) default: the chat template's own system prompt.

Why not "none": it is what the tokenizer's chat template renders by itself, so it is what the model was tuned on
and what a user of the model (or of an exported, orthogonalised copy) gets; and "none" is not available for every
template (`_without_system` fails on templates that render no system turn before the user turn), so it cannot be
a default that works everywhere. Arditi et al.'s no-system setting stays one option away (`system="none"`).
The choice matters: on Qwen2.5-Coder-0.5B it moves the held-out refusal rate from about a third to over half,
which is why every artifact records the value it was made with (`system_record`).
"""


def system_option(spec: System) -> System:
    """The `System` value for a user-facing option: "none" -> NO_SYSTEM (no system turn), "default" or None ->
    None (whatever the chat template inserts by itself, e.g. Qwen's "You are Qwen, ..."), any other text -> that
    text as the system message. A `System` value already parsed (NO_SYSTEM) passes through."""
    if isinstance(spec, NoSystem):
        return spec
    if spec is None or spec == "default":
        return None
    if spec == "none":
        return NO_SYSTEM
    if not isinstance(spec, str) or not spec.strip():
        raise InterpError(f"system must be 'none', 'default' or a non-empty system prompt, got {spec!r}")
    return spec


def system_record(value: System) -> str:
    """The JSON-serialisable record of a `System` value (or of an option string), for provenance: "none",
    "default" or the text; `system_option(system_record(v)) == v`."""
    value = system_option(value)
    if isinstance(value, NoSystem):
        return "none"
    return "default" if value is None else value
