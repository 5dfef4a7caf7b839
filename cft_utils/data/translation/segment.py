"""Segmentation: cut (masked) text into pieces that fit a translator's token budget.

Splits at line breaks or blank lines, then at sentence ends and finally at spaces; whitespace, list markers and
pieces without prose (a code block's placeholder, a bare number) are marked not to be sent to the translator.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .spans import DEFAULT_PLACEHOLDER_STYLE, PlaceholderStyle, get_style, has_prose

_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])\s+(?=\S)|(?<=[。！？])(?=\S)")
# Markdown list / heading / quote markers: kept verbatim (MT models tend to drop them).
_LINE_PREFIX = re.compile(r"^(?:[-*+•]|\d{1,3}[.)]|[A-Za-z][.)]|#{1,6}|>)\s+")


def approx_tokens(text: str) -> int:
    """A model-free token estimate (about four characters per token)."""
    return max(1, (len(text) + 3) // 4)


def _pack(parts: list[str], seps: list[str], budget: int, count: Callable[[str], int]) -> list[tuple[bool, str]]:
    """Greedily join consecutive ``parts`` (separated by ``seps``) into pieces within ``budget``."""
    pieces: list[tuple[bool, str]] = []
    cur = parts[0]
    for sep, part in zip(seps, parts[1:], strict=True):
        joined = cur + sep + part
        if count(joined) <= budget:
            cur = joined
        else:
            pieces += [(True, cur), (False, sep)]
            cur = part
    pieces.append((True, cur))
    return pieces


def _split_core(core: str, budget: int | None, count: Callable[[str], int]) -> list[tuple[bool, str]]:
    if budget is None or count(core) <= budget:
        return [(True, core)]
    seg = re.split(f"({_SENTENCE_END.pattern})", core)
    sentences, seps = seg[0::2], seg[1::2]
    out: list[tuple[bool, str]] = []
    for translate, piece in _pack(sentences, seps, budget, count):
        if translate and count(piece) > budget:  # one sentence alone is too long: cut at spaces
            words = re.split(r"(\s+)", piece)
            out += _pack(words[0::2], words[1::2], budget, count)
        else:
            out.append((translate, piece))
    return out


def split_for_translation(
    text: str,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    split_lines: bool = True,
    style: str | PlaceholderStyle = DEFAULT_PLACEHOLDER_STYLE,
) -> list[tuple[bool, str]]:
    """Cut (masked) text into ``(translate?, piece)`` pairs; ``"".join`` of the pieces gives ``text`` back.

    Splits at line breaks (``split_lines``) or blank lines, then at sentence ends and finally at spaces
    until every translatable piece fits ``max_tokens`` under ``count_tokens``. Whitespace, list markers
    and pieces without letters outside placeholders are returned with ``translate=False``.
    """
    st = get_style(style)
    count = count_tokens or approx_tokens
    boundary = r"(\n+)" if split_lines else r"(\n[ \t]*\n\s*)"
    chunks = re.split(boundary, text)
    out: list[tuple[bool, str]] = []
    for j, chunk in enumerate(chunks):
        if j % 2 == 1 or not chunk:
            if chunk:
                out.append((False, chunk))
            continue
        lead = chunk[: len(chunk) - len(chunk.lstrip())]
        rest = chunk[len(lead):]
        m = _LINE_PREFIX.match(rest)
        if m:
            lead, rest = lead + m.group(), rest[m.end():]
        core = rest.rstrip()
        trail = rest[len(core):]
        if lead:
            out.append((False, lead))
        if core:
            if has_prose(core, st):
                out += [(tr and has_prose(p, st), p) for tr, p in _split_core(core, max_tokens, count)]
            else:
                out.append((False, core))
        if trail:
            out.append((False, trail))
    return out

