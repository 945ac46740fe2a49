"""Readable token labels for figures and messages: one rule for every report.

Tokenizers hand back their vocabulary's own spelling of a token (`convert_ids_to_tokens`): byte-level BPE
(GPT-2, Llama, Qwen) writes a newline as `Ċ` and a leading space as `Ġ`, SentencePiece a leading space
as `▁` and a raw byte as `<0x0A>`. A reader wants the text: `token_text` decodes those spellings, and
`token_label` shows the text quoted, with newlines, tabs and other control characters escaped (`'\\n'`, `' to'`), so
that a label is one visible line and a leading space is seen.
"""

from __future__ import annotations

import re
from functools import lru_cache

_SENTENCEPIECE_BYTE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in for each of the 256 bytes (`bytes_to_unicode`), inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def token_text(token: str) -> str:
    """The text a vocabulary entry stands for: byte-level BPE (`Ċ` -> newline, `Ġ` -> space), SentencePiece
    (`▁` -> space, `<0x0A>` -> newline); plain text and special tokens (`<|im_end|>`) are returned as they are,
    and so is a byte-level piece of a longer UTF-8 character (it has no text of its own)."""
    if _SENTENCEPIECE_BYTE.fullmatch(token):
        return chr(int(token[3:5], 16))
    decoder = _byte_decoder()
    if token and all(ch in decoder for ch in token):
        try:
            return bytes(decoder[ch] for ch in token).decode("utf-8")
        except UnicodeDecodeError:
            return token
    return token.replace("▁", " ")


def escape(text: str) -> str:
    """`text` on one visible line: newline, tab, carriage return and backslash escaped, other control
    characters as \\xNN."""
    return "".join(_ESCAPES.get(ch, ch if ch.isprintable() or ch == " " else f"\\x{ord(ch):02x}") for ch in text)


def token_label(token: str) -> str:
    """A figure label for a vocabulary entry: its text (`token_text`), escaped (`escape`) and quoted, e.g.
    `'\\n'` for `Ċ` and `' to'` for `Ġto`."""
    return f"'{escape(token_text(token))}'"


__all__ = ["token_text", "token_label", "escape"]
