"""Token counting and document chunking for map nodes: ``count_tokens`` and ``chunk_text``,
pure functions. The estimate's rules, their measured error and the chunking guarantees are
in docs/chunking.md."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

__all__ = ["Chunk", "chunk_text", "count_tokens"]

UNITS_PER_TOKEN: Final = 12
"""Costs are kept in twelfths of a token so that fractional per-character weights add up
exactly; a text's count is its units divided by this, rounded up."""

_RUN_UNITS: Final = 10  # per run of letters / non-ASCII characters ("word")
_DIGIT_RUN_UNITS: Final = 12  # per run of digits, on top of 12 per digit
_SPACE_RUN_UNITS: Final = 12  # per run of two or more spaces
_SPACE_BLOCK: Final = b"s" * 8  # and 12 units per 8 spaces
_LONG_RUN_BLOCK: Final = b"g" * 24  # per 24 printable ASCII characters without a space
_LONG_RUN_UNITS: Final = 72

# Cutting a text at an arbitrary character and costing the sides separately can miss up to
# _CUT_UNDERCOUNT_UNITS of the whole's cost (a run of spaces or a long-run block split in
# two) or add up to _CUT_OVERCOUNT_UNITS (a word, a number or a run of spaces counted twice).
# At a boundary (see _BOUNDARY_PATTERNS) nothing is missed.
_CUT_UNDERCOUNT_UNITS: Final = max(_SPACE_RUN_UNITS, _LONG_RUN_UNITS)
_CUT_OVERCOUNT_UNITS: Final = _RUN_UNITS + _DIGIT_RUN_UNITS + _SPACE_RUN_UNITS
_FORCED_SLICE_CHARS: Final = 1024  # forced cuts cost the text in slices of this many chars
_OVERLAP_SLICE_MIN: Final = 64  # overlaps are bounded by costing slices of at least this
_RESCAN_CHARS: Final = 256  # searched again at a window's end, for a match cut by it


def _weights_table() -> bytes:
    """Byte -> class symbol (``_units`` prices each symbol: a 2 units, B 8, C 12, D 15, E 18,
    F 24, G 27, H 36, "." nothing). ASCII characters are classed by kind; a UTF-8 lead byte
    stands for its whole character and continuation bytes weigh nothing; the space is free
    here (runs of spaces are priced separately)."""
    table = bytearray(b"." * 256)  # "." weighs nothing
    for b in range(0x80):
        c = chr(b)
        if c.isascii() and c.isalpha():
            table[b] = ord("a")
        elif c != " ":
            table[b] = ord("C")  # digits, punctuation, controls: 1 token each
    lead_bytes = (
        (0xC2, 0xC2, "C"),  # U+0080-00BF Latin-1 punctuation and symbols, NBSP
        (0xC3, 0xC9, "F"),  # U+00C0-027F accented Latin letters
        (0xCA, 0xCD, "C"),  # U+0280-037F IPA, modifier letters, combining marks
        (0xCE, 0xCF, "D"),  # U+0380-03FF Greek
        (0xD0, 0xD4, "B"),  # U+0400-053F Cyrillic
        (0xD5, 0xD6, "F"),  # U+0540-05BF Armenian
        (0xD7, 0xDF, "D"),  # U+05C0-07FF Hebrew, Arabic, Syriac, Thaana, NKo
        (0xE0, 0xE0, "G"),  # U+0800-0FFF Devanagari ... Tibetan
        (0xE1, 0xE1, "H"),  # U+1000-1FFF Myanmar, Georgian, Ethiopic, Khmer, Latin/Greek ext.
        (0xE2, 0xE2, "F"),  # U+2000-2FFF symbols (general punctuation corrected below)
        (0xE3, 0xE3, "D"),  # U+3000-3FFF CJK punctuation, kana, Bopomofo
        (0xE4, 0xED, "E"),  # U+4000-DFFF Han, Yi, Hangul
        (0xEE, 0xEE, "H"),  # U+E000-EFFF private use
        (0xEF, 0xEF, "C"),  # U+F000-FFFF compatibility ideographs, fullwidth forms
        (0xF0, 0xF4, "H"),  # outside the BMP: emoji, rare Han, ...
    )
    for low, high, symbol in lead_bytes:
        for b in range(low, high + 1):
            table[b] = ord(symbol)
    return bytes(table)


_CLASS_TABLE: Final = _weights_table()


def _binary_table(members: bytes | range, yes: bytes, no: bytes) -> bytes:
    table = bytearray(no * 256)
    for b in members:
        table[b] = yes[0]
    return bytes(table)


_WORD_TABLE: Final = _binary_table(
    bytes(b for b in range(256) if b >= 0x80 or chr(b).isalpha()), b"a", b" "
)
_DIGIT_TABLE: Final = _binary_table(b"0123456789", b"0", b" ")
_SPACE_TABLE: Final = _binary_table(b" ", b"s", b"x")
_GRAPHIC_TABLE: Final = _binary_table(range(0x21, 0x7F), b"g", b" ")


def _units(text: str) -> int:
    """The estimate of ``text`` in units (twelfths of a token), before rounding."""
    if not text:
        return 0
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (e.g. from JSON "\ud800"): 3 bytes each
        data = text.encode("utf-8", "surrogatepass")
    count = data.translate(_CLASS_TABLE).count
    units = 2 * count(b"a") + 12 * count(b"C")  # ASCII letters; digits, punctuation, controls
    if not text.isascii():
        units += (
            8 * count(b"B")
            + 15 * count(b"D")
            + 18 * count(b"E")
            + 24 * count(b"F")
            + 27 * count(b"G")
            + 36 * count(b"H")
        )
        if b"\xe2" in data:  # general punctuation: 12 units, not the 24 of lead byte E2
            units -= 12 * (data.count(b"\xe2\x80") + data.count(b"\xe2\x81"))
    words = data.translate(_WORD_TABLE)
    units += _RUN_UNITS * (words.count(b" a") + words.startswith(b"a"))
    digits = data.translate(_DIGIT_TABLE)
    units += _DIGIT_RUN_UNITS * (digits.count(b" 0") + digits.startswith(b"0"))
    if b"  " in data:
        spaces = data.translate(_SPACE_TABLE)
        runs = spaces.count(b"xss") + spaces.startswith(b"ss")
        units += _SPACE_RUN_UNITS * (runs + spaces.count(_SPACE_BLOCK))
    if len(data) >= len(_LONG_RUN_BLOCK):
        units += _LONG_RUN_UNITS * data.translate(_GRAPHIC_TABLE).count(_LONG_RUN_BLOCK)
    return units


def count_tokens(text: str) -> int:
    """A conservative estimate of the tokens ``text`` costs a model, the same for every model
    (docs/chunking.md gives the rules, their basis and their limits). Empty text is 0
    tokens."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}")
    return -(-_units(text) // UNITS_PER_TOKEN)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a chunked text: ``text == original[start:end]`` (character offsets);
    ``index`` is its position (0-based) among ``count`` chunks."""

    index: int
    count: int
    text: str
    start: int
    end: int


_HAN_KANA: Final = (
    "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff"
)

# Boundary kinds, coarsest first. A boundary is the end of a match: matches end after the
# separator's trailing whitespace, so the next piece starts with a non-space character, or
# right after a CJK mark, or between two Han/kana characters. None of these cuts splits a run
# that the estimate would count less when split (spaces, long ASCII runs), so the costs of
# the pieces between boundaries add up to at least the cost of the whole. A match that ends
# before the end of the searched window is the same as in the whole text (the only
# lookahead, of the CJK gap, cannot match at the window's end).
_BOUNDARY_PATTERNS: Final = (
    # paragraph: a blank line (or U+2029 PARAGRAPH SEPARATOR)
    re.compile(r"(?:\n[^\S\n]*\n|\u2029)\s*"),
    # line break (the separators of str.splitlines)
    re.compile(r"[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]\s*"),
    # sentence end
    re.compile(
        r"[.!?]+[\"'\)\]\u2019\u201d]*\s+|[\u3002\uff01\uff1f\uff61]+[\u300d\u300f\uff09\u201d\u2019]*\s*"
    ),
    # clause mark
    re.compile(
        r"[,;:]+[\"'\)\]\u2019\u201d]*\s+|[\uff0c\u3001\uff1b\uff1a]+[\u300d\u300f\uff09\u201d\u2019]*\s*"
    ),
    # any whitespace, or the gap between two Han or kana characters (CJK text has no spaces)
    re.compile(rf"\s+|(?<=[{_HAN_KANA}])(?=[{_HAN_KANA}])"),
)


def chunk_text(text: str, *, chunk_tokens: int, overlap_tokens: int = 0) -> list[Chunk]:
    """Cut ``text`` into ordered chunks of at most ``chunk_tokens`` tokens (``count_tokens``),
    consecutive chunks sharing at most ``overlap_tokens`` tokens of text. Prefers paragraph,
    then line, sentence, clause and word boundaries; cuts inside a word only when nothing
    else fits. docs/chunking.md states the exact guarantees. Empty text gives ``[]``.

    Raises ``TypeError`` for arguments of the wrong type and ``ValueError`` unless
    ``chunk_tokens >= 1`` and ``0 <= overlap_tokens < chunk_tokens``."""
    _check_args(text, chunk_tokens, overlap_tokens)
    spans = list(_spans(text, chunk_tokens, overlap_tokens))
    count = len(spans)
    return [Chunk(i, count, text[s:e], s, e) for i, (s, e) in enumerate(spans)]


def _check_args(text: str, chunk_tokens: int, overlap_tokens: int) -> None:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}")
    for name, value in (("chunk_tokens", chunk_tokens), ("overlap_tokens", overlap_tokens)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    if overlap_tokens < 0:
        raise ValueError(f"overlap_tokens must not be negative, got {overlap_tokens}")
    if overlap_tokens >= chunk_tokens:
        raise ValueError(
            f"overlap_tokens must be less than chunk_tokens, got overlap_tokens="
            f"{overlap_tokens} with chunk_tokens={chunk_tokens}"
        )


def count_chunks(
    text: str, *, chunk_tokens: int, overlap_tokens: int = 0, limit: int | None = None
) -> int:
    """How many chunks ``chunk_text`` makes of ``text`` with these settings; with ``limit``,
    it stops counting past it (returns ``limit + 1`` for "more than ``limit``"), so a text
    that would make far too many chunks costs no more than ``limit`` of them to refuse."""
    _check_args(text, chunk_tokens, overlap_tokens)
    n = 0
    for _ in _spans(text, chunk_tokens, overlap_tokens):
        n += 1
        if limit is not None and n > limit:
            break
    return n


def _spans(text: str, chunk_tokens: int, overlap_tokens: int) -> Iterator[tuple[int, int]]:
    if not text:
        return
    budget = chunk_tokens * UNITS_PER_TOKEN
    overlap = overlap_tokens * UNITS_PER_TOKEN
    start = 0
    end = _chunk_end(text, start, budget)
    yield start, end
    while end < len(text):
        previous_end = end
        start = _overlap_start(text, start, previous_end, overlap) if overlap else previous_end
        end = _chunk_end(text, start, budget)
        if end <= previous_end:  # the overlap left no room to go further: drop it
            start = previous_end
            end = _chunk_end(text, start, budget)
        yield start, end


def _fits(text: str, start: int, end: int, room: int) -> int:
    """``_units(text[start:end])`` if it is at most ``room``, else -1. A piece of n
    characters costs at least n - 1 units (every non-space character costs 2 or more, a
    single space sits next to one, and longer space runs cost more than a unit a space), so
    a piece longer than ``room + 1`` is refused without being costed."""
    if end - start - 1 > room:
        return -1
    units = _units(text[start:end])
    return units if units <= room else -1


def _reach(text: str, start: int, room: int, slice_chars: int) -> int:
    """A position that no fitting end passes: ``_units(text[start:x]) <= room`` implies
    ``x <= result``. Costs the text in slices; a cut inside a slice boundary can make the two
    sides' sum exceed the whole by at most ``_CUT_OVERCOUNT_UNITS``, which is taken off."""
    n = len(text)
    pos, total = start, 0
    while pos < n:
        step_end = min(n, pos + slice_chars)
        total += _units(text[pos:step_end])
        if total > room:
            return step_end
        total -= _CUT_OVERCOUNT_UNITS
        pos = step_end
    return n


def _reach_back(text: str, low: int, end: int, room: int, slice_chars: int) -> int:
    """Like ``_reach`` leftwards: ``_units(text[x:end]) <= room`` implies ``x >= result``."""
    pos, total = end, 0
    while pos > low:
        step_start = max(low, pos - slice_chars)
        total += _units(text[step_start:pos])
        if total > room:
            return step_start
        total -= _CUT_OVERCOUNT_UNITS
        pos = step_start
    return low


def _boundaries(
    pattern: re.Pattern[str],
    text: str,
    lo: int,
    hi: int,
    gap: int,
    window: int,
    tighten: Callable[[], int] | None,
) -> Iterator[int]:
    """Ends of ``pattern``'s matches in ``(lo, hi]``, in order, skipping those less than
    ``gap`` characters after ``lo`` or after the previous one (the caller finds them again
    with ``_one_by_one`` when it needs them). The text is searched in windows of ``window``
    characters (a match cut by a window's end is searched for again), so a caller that stops
    early has paid for at most one window more; after a window without a match,
    ``tighten()`` (if given) supplies a tighter ``hi``."""
    scan = last = lo
    resume = lo + gap - 1
    while True:
        scan = max(scan, resume)
        if scan >= hi:
            return
        window_end = min(hi, scan + window)
        found = False
        for match in pattern.finditer(text, scan, window_end):
            b = match.end()
            if b <= last or b < resume:
                continue
            if b == window_end < hi:
                break  # the match may go on past the window
            last = b
            found = True
            yield b
            resume = b + gap - 1
            if gap > 1:
                break
        if not found and window_end < hi:
            scan = max(last, window_end - _RESCAN_CHARS)
            if tighten is not None:
                hi = min(hi, tighten())
                tighten = None
        elif found and gap > 1:
            scan = resume
        elif window_end >= hi:
            return
        else:
            scan = max(last, window_end - _RESCAN_CHARS)


def _chunk_end(text: str, start: int, budget: int) -> int:
    """Where the chunk that begins at ``start`` ends (> start): see docs/chunking.md."""
    n = len(text)
    pos, used, limit = start, 0, n
    # Ends past `reach` cannot fit. The first bound comes from length alone (a piece of k
    # characters costs at least k - 1 units); a tighter one costs the text, so it is computed
    # only when a boundary search finds nothing for a whole window.
    reach = min(n, start + budget + 1)
    window = max(512, min(8192, budget // 8))
    tightened = reach - start <= window

    def tighten() -> int:
        nonlocal reach, tightened
        if not tightened:
            reach = min(reach, _reach(text, start, budget, window))
            tightened = True
        return reach + 1

    # Boundaries closer together than this are costed as one group (huge numbers of tiny
    # paragraphs would otherwise cost one call each); on overflow they are tried one by one.
    gap = max(1, min(256, budget // 16))
    half = budget // 2
    for pattern in _BOUNDARY_PATTERNS:
        cap = min(reach + 1, pos + budget - used + 2)  # fitting ends are < cap
        overflow_end = -1
        boundaries = _boundaries(
            pattern, text, pos, min(limit, cap), gap, window, None if tightened else tighten
        )
        for b in boundaries:
            cap = min(reach + 1, pos + budget - used + 2)
            if b >= cap:  # the rest of this piece is out of reach
                break
            units = _fits(text, pos, b, budget - used)
            if units < 0:
                overflow_end = b
                break
            used, pos = used + units, b
        if overflow_end < 0:  # no boundary overflowed: the piece ends at `limit`
            cap = min(reach + 1, pos + budget - used + 2)
            if limit < cap and _fits(text, pos, limit, budget - used) >= 0:
                return limit
            overflow_end = limit
        # Boundaries skipped for being close together lie just after pos: try them singly.
        search_end = min(overflow_end, cap, pos + gap + _RESCAN_CHARS)
        pos, used, limit = _one_by_one(text, pattern, pos, used, budget, search_end, overflow_end)
        if pos > start and used >= half:
            return pos
    if pos > start:
        return pos
    # Not even one boundary fits: cut inside the word, as far as the budget allows.
    end = _forced_end(text, pos, min(limit, tighten()), budget)
    return end if end > pos else start + 1


def _one_by_one(
    text: str,
    pattern: re.Pattern[str],
    pos: int,
    used: int,
    budget: int,
    search_end: int,
    overflow_end: int,
) -> tuple[int, int, int]:
    """Take as many of ``pattern``'s boundaries before ``search_end`` as fit; returns the new
    position, the units used and the end of the piece that did not fit (``overflow_end`` if
    all of them fit). The piece is costed as a whole (bisection over the boundaries; costs
    only grow with the end), so close boundaries do not each count their word again."""
    bounds = [
        b for m in pattern.finditer(text, pos, search_end) if pos < (b := m.end()) < search_end
    ]
    lo, hi, best = -1, len(bounds), 0  # bounds[: lo + 1] fit; bounds[hi:] do not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        units = _fits(text, pos, bounds[mid], budget - used)
        if units >= 0:
            lo, best = mid, units
        else:
            hi = mid
    if lo >= 0:
        pos, used = bounds[lo], used + best
    return pos, used, bounds[hi] if hi < len(bounds) else overflow_end


def _cut_units(text: str, i: int) -> int:
    """The most cutting ``text`` at ``i`` can hide from the sum of the two sides' costs: a run
    of spaces or of printable ASCII split in two (see ``_CUT_UNDERCOUNT_UNITS``)."""
    left, right = text[i - 1], text[i]
    if left == " " == right:
        return _SPACE_RUN_UNITS
    if "!" <= left <= "~" and "!" <= right <= "~":
        return _LONG_RUN_UNITS
    return 0


def _forced_end(text: str, pos: int, limit: int, room: int) -> int:
    """The furthest character position after ``pos`` (up to ``limit``) such that the piece
    ``text[pos:end]`` costs at most ``room`` units; ``pos`` if not even one character fits.

    A long piece is first taken in slices of ``_FORCED_SLICE_CHARS``, each cut charged what
    it can hide (``_cut_units``) so that the sum bounds the whole from above; the end is then
    found by bisection with exact costs from the last cut."""
    hi = min(limit, pos + room + 1)
    used = 0
    top = hi + 1  # the smallest end known not to fit
    while hi - pos > _FORCED_SLICE_CHARS:
        step_end = pos + _FORCED_SLICE_CHARS
        units = _units(text[pos:step_end]) + _cut_units(text, step_end)
        if used + units > room:
            top = step_end + 1
            break
        used, pos = used + units, step_end
    lo = pos
    while top - lo > 1:
        mid = (lo + top) // 2
        if used + _units(text[pos:mid]) <= room:
            lo = mid
        else:
            top = mid
    return lo


def _overlap_start(text: str, start: int, end: int, overlap: int) -> int:
    """Where the chunk after ``text[start:end]`` begins. ``first`` is the earliest position
    after ``start`` from which the text up to ``end`` costs at most ``overlap`` units; the
    result is the first boundary at or after it of the coarsest kind that keeps at least half
    of ``end - first`` characters, else the nearest boundary of any kind, else ``first``."""
    low = max(start + 1, end - overlap - 1)  # text[p:end] costs at least end - p - 1
    if end - low > _OVERLAP_SLICE_MIN:
        slice_chars = max(_OVERLAP_SLICE_MIN, overlap // 8)
        low = max(low, _reach_back(text, low, end, overlap, slice_chars))
    lo, first = low - 1, end  # text[first:end] fits; text[lo:end] does not, or lo < low
    while first - lo > 1:
        mid = (lo + first) // 2
        if _units(text[mid:end]) <= overlap:
            first = mid
        else:
            lo = mid
    if first >= end:
        return end
    nearest = end
    for pattern in _BOUNDARY_PATTERNS:
        # A match that starts a little before `first` may still end at or after it.
        for match in pattern.finditer(text, max(start + 1, first - _RESCAN_CHARS), end):
            b = match.end()
            if b >= first:
                if b < end and (end - b) * 2 >= end - first:
                    return b
                nearest = min(nearest, b)
                break
    return nearest if nearest < end else first
