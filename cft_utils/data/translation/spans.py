"""Protected spans: mask what must not be translated with numbered placeholders and put it back.

Code, math, URLs, e-mail addresses, numbers with units, template variables and JSON/markup stay verbatim in
mOpenOrca (paper App. A.2). ``protect`` replaces each such span with a placeholder (``⟦0⟧``, or ``__P0__`` for
tokenizers that cannot spell ``⟦``); ``restore`` puts the spans back and fails loudly (``SpanRestoreError``)
when the translator dropped, duplicated or altered a placeholder, so such a record is rejected, never kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PlaceholderStyle:
    """How placeholder number ``i`` is written, and how to find it (exactly, or mangled) in output."""

    name: str
    template: str  # format string with one {} for the index
    exact: re.Pattern  # group 1 = index
    mangled: re.Pattern  # leftovers that show a placeholder was altered

    def make(self, i: int) -> str:
        """The placeholder for span number ``i``."""
        return self.template.format(i)


PLACEHOLDER_STYLES = {
    # Mathematical white brackets: never produced by prose, kept by LLMs and byte-level tokenizers.
    "bracket": PlaceholderStyle("bracket", "⟦{}⟧", re.compile(r"⟦(\d+)⟧"), re.compile(r"[⟦⟧]")),
    # ASCII fallback for SentencePiece vocabularies without ``⟦`` (NLLB maps it to <unk>).
    "underscore": PlaceholderStyle(
        "underscore", "__P{}__", re.compile(r"__P(\d+)__"), re.compile(r"_+\s*P\s*_*\s*\d+|P\d+\s*_+")
    ),
}
DEFAULT_PLACEHOLDER_STYLE = "bracket"


def get_style(style: str | PlaceholderStyle) -> PlaceholderStyle:
    """The ``PlaceholderStyle`` named ``style`` (a style object is returned as is)."""
    if isinstance(style, PlaceholderStyle):
        return style
    if style not in PLACEHOLDER_STYLES:
        raise ValueError(f"unknown placeholder style {style!r}; choose one of {sorted(PLACEHOLDER_STYLES)}")
    return PLACEHOLDER_STYLES[style]


@dataclass(frozen=True)
class Span:
    """One protected piece of the original text: its placeholder index, verbatim text and kind."""

    index: int
    text: str
    kind: str


class SpanRestoreError(ValueError):
    """The translated text lost, duplicated, invented or altered placeholders."""

    def __init__(self, missing=(), duplicated=(), unknown=(), altered=()):
        self.missing = list(missing)
        self.duplicated = list(duplicated)
        self.unknown = list(unknown)
        self.altered = list(altered)
        parts = [f"{k}={v}" for k, v in self.as_dict().items() if v]
        super().__init__("placeholders did not survive translation: " + ", ".join(parts))

    def as_dict(self) -> dict:
        """The four problem lists, as stored with a rejected record."""
        return {"missing": self.missing, "duplicated": self.duplicated, "unknown": self.unknown,
                "altered": self.altered}


_UNITS = sorted(
    """% ‰ °C °F ° km/h m/s mph kph km cm mm nm µm μm m kg mg µg μg g lb lbs oz ml mL cl dl l L gal ft yd mi
    sec ms µs ns min h hr hrs Hz kHz MHz GHz B KB kB MB GB TB Kb Mb Gb bps kbps Mbps Gbps V mV kV W kW MW GW
    kWh mA mAh J kJ cal kcal N Pa kPa hPa bar psi px pt em rem dpi""".split(),
    key=len, reverse=True,
)
_NUMBER = r"[-+]?\d+(?:[.,]\d+)*"
_INLINE_DOLLAR_MATH = re.compile(r"(?<![\\$\w])\$(?=[^\s$])(?:[^$\n\\]|\\.)+?(?<=\S)\$(?!\d)")

# (kind, pattern), in priority order: an earlier kind claims its text first; later finders run on text
# where claimed spans are blanked out, so spans never overlap and a code block's backticks cannot pair
# with an inline-code backtick after it.
_SPAN_PATTERNS: list[tuple[str, re.Pattern]] = [
    # Placeholder-like strings already in the source must not be confused with ours.
    ("placeholder", re.compile(r"⟦[^⟦⟧\n]{0,12}⟧|[⟦⟧]|_+\s*P\s*\d+\s*_+")),
    ("code_block", re.compile(r"(?P<f>`{3,}|~{3,})[\s\S]*?(?P=f)|(?:`{3,}|~{3,})[\s\S]*\Z")),
    ("inline_code", re.compile(r"``[^\n]+?``|`[^`\n]+`")),
    ("latex_env", re.compile(r"\\begin\{([A-Za-z]+\*?)\}[\s\S]*?\\end\{\1\}")),
    ("display_math", re.compile(r"\$\$[\s\S]+?\$\$|\\\[[\s\S]+?\\\]")),
    ("inline_math", re.compile(r"\\\([\s\S]+?\\\)|" + _INLINE_DOLLAR_MATH.pattern)),
    ("json", None),  # found by _find_json (a decoder, not a regex)
    ("markup", re.compile(
        r"<!--[\s\S]*?-->|<\|[^|<>\n]{1,40}\|>|&(?:[A-Za-z]{2,8}|#\d{1,6});"
        r"|</?[A-Za-z][\w:.-]*(?:\s+[\w:.-]+(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s\"'<>=`]+))?)*\s*/?>"
    )),
    ("url", re.compile(r"\b(?:https?|ftp)://[^\s<>\"'`]+|\bwww\.[^\s<>\"'`]+\.[^\s<>\"'`]+")),
    ("email", re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")),
    ("template", re.compile(
        r"\{\{[\s\S]*?\}\}|\{%[\s\S]*?%\}|\$\{[A-Za-z_]\w*\}"
        r"|\{(?:[A-Za-z_][\w.]*(?:\[[^\]\n]*\])?)?(?:![rsa])?(?::[^{}\n]*)?\}"
        r"|(?<![\d%])%(?:\([A-Za-z_]\w*\))?[-+#0]*(?:\d+|\*)?(?:\.\d+)?[sdifeEgGxXc](?![A-Za-z])"
    )),
    ("latex_command", re.compile(r"\\[A-Za-z]+\*?(?:\[[^\]\n]*\])?(?:\{[^{}\n]*\})*")),
    ("number_unit", re.compile(
        r"[$€£¥₹]\s?\d+(?:[.,]\d+)*(?:\s?(?:[kKmMbB]n?|million|billion)\b)?"
        r"|(?<![\w.])" + _NUMBER + r"\s?(?:" + "|".join(re.escape(u) for u in _UNITS) + r")(?![\w/])"
    )),
]
SPAN_KINDS = tuple(kind for kind, _ in _SPAN_PATTERNS)
_BLANK = "\x00"


def _trim_url(s: str) -> str:
    """Drop sentence punctuation and unbalanced closing brackets from the end of a URL match."""
    while s:
        last = s[-1]
        if last in ".,;:!?'\"":
            s = s[:-1]
        elif last in ")]}" and s.count({")": "(", "]": "[", "}": "{"}[last]) < s.count(last):
            s = s[:-1]
        else:
            break
    return s


_JSON_START = re.compile(r"[\[{]")


def _find_json(text: str) -> Iterable[tuple[int, int]]:
    """Yield (start, end) of JSON objects/arrays that decode completely (``{"a": 1}``, ``[1, 2]``)."""
    decoder = json.JSONDecoder()
    i = 0
    while True:
        m = _JSON_START.search(text, i)
        if not m:
            return
        try:
            obj, end = decoder.raw_decode(text, m.start())
        except ValueError:
            i = m.start() + 1
            continue
        if isinstance(obj, (dict, list)):
            yield m.start(), end
            i = end
        else:
            i = m.start() + 1


def find_protected_spans(text: str) -> list[tuple[int, int, str]]:
    """Return sorted, non-overlapping ``(start, end, kind)`` of everything that must not be translated.

    Kinds are tried in priority order. A hit that cuts through a span claimed earlier is dropped; a hit
    that contains whole claimed spans absorbs them (display math around a ``\\begin{..}`` block, JSON
    around a URL). Regex finders see claimed spans blanked out, so their delimiters cannot pair up with
    a backtick or dollar inside a code block.
    """
    work = text
    found: list[tuple[int, int, str]] = []
    for kind, pattern in _SPAN_PATTERNS:
        if kind == "json":
            hits = list(_find_json(text))
        else:
            hits = []
            for m in pattern.finditer(work):
                start, end = m.start(), m.end()
                if kind == "url":
                    end = start + len(_trim_url(m.group()))
                if end > start:
                    hits.append((start, end))
        accepted = []
        for s, e in hits:
            overlapping = [f for f in found if f[0] < e and s < f[1]]
            if any(not (s <= f[0] and f[1] <= e) for f in overlapping):
                continue  # cuts through a stronger span
            for f in overlapping:
                found.remove(f)
            found.append((s, e, kind))
            accepted.append((s, e))
        if accepted:
            parts, pos = [], 0
            for s, e in accepted:
                parts += [work[pos:s], _BLANK * (e - s)]
                pos = e
            work = "".join(parts) + work[pos:]
    return sorted(found)


def protect(text: str, style: str | PlaceholderStyle = DEFAULT_PLACEHOLDER_STYLE) -> tuple[str, list[Span]]:
    """Mask protected spans with numbered placeholders; return ``(masked_text, spans)``."""
    st = get_style(style)
    spans: list[Span] = []
    out, pos = [], 0
    for start, end, kind in find_protected_spans(text):
        out.append(text[pos:start])
        out.append(st.make(len(spans)))
        spans.append(Span(len(spans), text[start:end], kind))
        pos = end
    out.append(text[pos:])
    return "".join(out), spans


def check_placeholders(masked: str, spans: Sequence[Span], style=DEFAULT_PLACEHOLDER_STYLE) -> SpanRestoreError | None:
    """Return a ``SpanRestoreError`` describing what went wrong with the placeholders, or None if intact."""
    st = get_style(style)
    counts: dict[int, int] = {}
    for m in st.exact.finditer(masked):
        counts[int(m.group(1))] = counts.get(int(m.group(1)), 0) + 1
    n = len(spans)
    missing = [i for i in range(n) if counts.get(i, 0) == 0]
    duplicated = [i for i in range(n) if counts.get(i, 0) > 1]
    unknown = sorted(i for i in counts if i >= n)
    altered = [m.group() for m in st.mangled.finditer(st.exact.sub(" ", masked))]
    if missing or duplicated or unknown or altered:
        return SpanRestoreError(missing, duplicated, unknown, altered)
    return None


def restore(masked: str, spans: Sequence[Span], style=DEFAULT_PLACEHOLDER_STYLE) -> str:
    """Put the protected spans back; raise ``SpanRestoreError`` if any placeholder is missing/duplicated/altered."""
    err = check_placeholders(masked, spans, style)
    if err is not None:
        raise err
    st = get_style(style)
    return st.exact.sub(lambda m: spans[int(m.group(1))].text, masked)



LETTER = re.compile(r"[^\W\d_]")


def has_prose(text: str, style: str | PlaceholderStyle = DEFAULT_PLACEHOLDER_STYLE) -> bool:
    """True when ``text`` has a letter outside its placeholders (so there is something to translate)."""
    return bool(LETTER.search(get_style(style).exact.sub(" ", text)))
