"""One exception type for every bad input, so callers and the CLI can report it plainly."""


class InterpError(ValueError):
    """A bad input or a broken file: the message says what was wrong and what would be right."""
