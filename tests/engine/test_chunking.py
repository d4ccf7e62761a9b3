"""Tests for app.engine.chunking: the conservative token estimate and the chunker.

Properties (hypothesis) over random texts mixing paragraphs, sentences, long words, CJK,
whitespace runs and arbitrary unicode: chunks cover the text in order, each chunk is its
slice of the text, consecutive chunks overlap by at most the requested tokens, and every
chunk fits the budget except a one-character chunk whose character alone does not."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.engine import chunking
from app.engine.chunking import Chunk, chunk_text, count_chunks, count_tokens

PROPERTY_SETTINGS = settings(max_examples=500, deadline=None)

# ---------------------------------------------------------------------------------------
# Random texts

_WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ", min_size=1, max_size=12)
_LONG_WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789+/=", min_size=20, max_size=300)
_CJK = st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x4FFF), max_size=40)
_KANA = st.text(alphabet=st.characters(min_codepoint=0x3040, max_codepoint=0x30FF), max_size=20)
_SEPARATOR = st.sampled_from(
    [" ", "  ", "\n", "\n\n", "\n \n", "\n\n\n", "\t", ". ", "! ", "? ", ".\n", ", ", "; ",
     "\u3002", "\uff01", "\uff0c", "\u3001", "\r\n", "\r\n\r\n", "\u3000", "\xa0", "\u2029",
     "\u300d", '." ', " " * 9, " " * 30]
)  # fmt: skip
_NUMBER = st.integers(min_value=0, max_value=10**12).map(str)
_ANY = st.text(max_size=8)  # any code point but surrogates
_SURROGATE = st.characters(categories=["Cs"])  # lone surrogates, as JSON can carry them
_PIECE = st.one_of(
    _WORD, _WORD, _WORD, _SEPARATOR, _SEPARATOR, _CJK, _KANA, _LONG_WORD, _NUMBER, _ANY, _SURROGATE
)
TEXTS = st.lists(_PIECE, max_size=200).map("".join)


@st.composite
def budgets(draw: st.DrawFn) -> tuple[int, int]:
    chunk_tokens = draw(st.one_of(st.integers(1, 8), st.integers(1, 400)))
    overlap_tokens = draw(st.one_of(st.just(0), st.integers(0, chunk_tokens - 1)))
    return chunk_tokens, overlap_tokens


def check_chunks(text: str, chunks: list[Chunk], chunk_tokens: int, overlap_tokens: int) -> None:
    """Every guarantee of chunk_text, for one call."""
    if not text:
        assert chunks == []
        return
    assert chunks, "a non-empty text gives at least one chunk"
    assert chunks[0].start == 0
    assert chunks[-1].end == len(text)
    for i, chunk in enumerate(chunks):
        assert chunk.index == i
        assert chunk.count == len(chunks)
        assert 0 <= chunk.start < chunk.end <= len(text), "no empty chunk"
        assert text[chunk.start : chunk.end] == chunk.text
        tokens = count_tokens(chunk.text)
        if tokens > chunk_tokens:
            # The one exception: a single character that alone costs more than the budget,
            # which can happen only for budgets below the most one character costs (4).
            assert len(chunk.text) == 1, (chunk, tokens)
            assert chunk_tokens < 4
        if i:
            previous = chunks[i - 1]
            # In order, always progressing, and nothing between them is lost.
            assert previous.start < chunk.start <= previous.end < chunk.end
            shared = text[chunk.start : previous.end]
            assert count_tokens(shared) <= overlap_tokens, (shared, overlap_tokens)
            if overlap_tokens == 0:
                assert chunk.start == previous.end


@PROPERTY_SETTINGS
@given(text=TEXTS, budget=budgets())
def test_chunks_cover_the_text_in_order_within_budget_and_overlap(
    text: str, budget: tuple[int, int]
) -> None:
    chunk_tokens, overlap_tokens = budget
    chunks = chunk_text(text, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)
    check_chunks(text, chunks, chunk_tokens, overlap_tokens)
    # Deterministic: the same call gives the same chunks.
    assert chunk_text(text, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens) == chunks


@settings(max_examples=40, deadline=None)
@given(
    paragraphs=st.lists(
        st.lists(st.one_of(_WORD, _CJK, _LONG_WORD), min_size=1, max_size=60).map(" ".join),
        min_size=1,
        max_size=12,
    ),
    budget=budgets(),
)
def test_longer_structured_texts(paragraphs: list[str], budget: tuple[int, int]) -> None:
    text = "\n\n".join(paragraphs)
    chunk_tokens, overlap_tokens = budget
    chunks = chunk_text(text, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)
    check_chunks(text, chunks, chunk_tokens, overlap_tokens)


@settings(max_examples=60, deadline=None)
@given(text=TEXTS.filter(bool))
def test_a_budget_of_four_or_more_is_never_exceeded(text: str) -> None:
    for chunk in chunk_text(text, chunk_tokens=4):
        assert count_tokens(chunk.text) <= 4


# ---------------------------------------------------------------------------------------
# Boundary preference


def test_whole_paragraphs_when_they_fit() -> None:
    paragraphs = [f"Paragraph {i} says something. " * 6 for i in range(12)]
    text = "\n\n".join(p.strip() for p in paragraphs)
    per_paragraph = count_tokens(paragraphs[0])
    chunks = chunk_text(text, chunk_tokens=per_paragraph * 3)
    assert len(chunks) > 2
    for chunk in chunks:
        # Each chunk is whole paragraphs: it starts a paragraph and ends after a blank line.
        assert chunk.start == 0 or text[chunk.start - 2 : chunk.start] == "\n\n"
        assert chunk.end == len(text) or chunk.text.endswith("\n\n")
        # ... and as many as fit: never fewer than two of the three that would.
        assert chunk.end == len(text) or chunk.text.count("Paragraph") >= 2


def test_a_short_heading_paragraph_does_not_make_a_tiny_chunk() -> None:
    # The paragraph after the heading is too big; cutting after the heading would leave a
    # chunk of a few tokens, so the chunk goes on line by line.
    body = "\n".join(f"Line {i} of a long paragraph without blank lines." for i in range(60))
    text = "Title\n\n" + body
    chunks = chunk_text(text, chunk_tokens=200)
    assert chunks[0].text.startswith("Title\n\nLine 0")
    assert count_tokens(chunks[0].text) > 100
    assert all(c.end == len(text) or c.text.endswith("\n") for c in chunks)


def test_sentences_then_words_then_inside_a_word() -> None:
    sentence = "This sentence has exactly eight words in it. "
    line = sentence * 40  # one long line: no paragraph or line breaks to cut at
    chunks = chunk_text(line, chunk_tokens=60)
    assert len(chunks) > 1
    assert all(c.end == len(line) or c.text.endswith(". ") for c in chunks)

    words = "word " * 400  # no sentence ends: cut between words
    chunks = chunk_text(words, chunk_tokens=25)
    assert all(c.end == len(words) or c.text.endswith(" ") for c in chunks)

    blob = "QUJD" * 500  # one long word: cut inside it, as little over as possible
    chunks = chunk_text(blob, chunk_tokens=50)
    assert len(chunks) > 1
    assert all(count_tokens(c.text) <= 50 for c in chunks)
    assert min(count_tokens(c.text) for c in chunks[:-1]) >= 40


@pytest.mark.parametrize(
    "blob", ["x" * 60_000, "QUJD+/09" * 8_000, "ab  " * 15_000, "\u4e00" * 30_000]
)
def test_long_unbroken_text_is_cut_within_budget(blob: str) -> None:
    # Cuts inside runs the estimate counts as a whole (long ASCII runs, space runs) are
    # charged what they can hide, so the chunks still fit.
    for chunk_tokens in (700, 2000):
        chunks = chunk_text(blob, chunk_tokens=chunk_tokens, overlap_tokens=50)
        check_chunks(blob, chunks, chunk_tokens, 50)
        assert min(count_tokens(c.text) for c in chunks[:-1]) >= 0.9 * chunk_tokens


def test_cjk_sentence_ends_and_character_gaps() -> None:
    sentence = "长文档会被切分成若干块\uff0c每一块交给一个子智能体处理。"
    text = sentence * 30
    chunks = chunk_text(text, chunk_tokens=100)
    assert len(chunks) > 1
    assert all(c.end == len(text) or c.text.endswith("。") for c in chunks)
    # With no punctuation at all, cuts fall between characters and still fit.
    plain = "字" * 3000
    chunks = chunk_text(plain, chunk_tokens=100)
    assert "".join(c.text for c in chunks) == plain
    assert all(count_tokens(c.text) <= 100 for c in chunks)


def test_overlap_starts_at_a_word_and_stays_within_the_request() -> None:
    text = " ".join(f"w{i}ord" for i in range(2000))
    chunks = chunk_text(text, chunk_tokens=300, overlap_tokens=40)
    assert len(chunks) > 3
    for previous, chunk in itertools.pairwise(chunks):
        assert chunk.start < previous.end, "an overlap was asked for and there is room"
        assert text[chunk.start - 1] == " ", "the overlap starts at a word"
        shared = count_tokens(text[chunk.start : previous.end])
        assert 20 <= shared <= 40


def test_single_characters_dearer_than_the_budget_become_their_own_chunks() -> None:
    # A Han character alone counts 3 tokens: with a budget of 1 each is a chunk by itself.
    chunks = chunk_text("你好吗", chunk_tokens=1)
    assert [c.text for c in chunks] == ["你", "好", "吗"]
    assert all(count_tokens(c.text) > 1 for c in chunks)
    # Cheap characters around them still share a chunk when they fit.
    chunks = chunk_text("a b 你", chunk_tokens=2)
    assert [c.text for c in chunks] == ["a b ", "你"]


def test_empty_text_and_argument_validation() -> None:
    assert chunk_text("", chunk_tokens=10) == []
    assert chunk_text("   ", chunk_tokens=10) == [Chunk(0, 1, "   ", 0, 3)]
    with pytest.raises(ValueError, match="chunk_tokens must be at least 1"):
        chunk_text("abc", chunk_tokens=0)
    with pytest.raises(ValueError, match="overlap_tokens must not be negative"):
        chunk_text("abc", chunk_tokens=10, overlap_tokens=-1)
    with pytest.raises(ValueError, match="overlap_tokens must be less than chunk_tokens"):
        chunk_text("abc", chunk_tokens=10, overlap_tokens=10)
    with pytest.raises(TypeError, match="chunk_tokens must be an int"):
        chunk_text("abc", chunk_tokens=True)
    with pytest.raises(TypeError, match="overlap_tokens must be an int"):
        chunk_text("abc", chunk_tokens=10, overlap_tokens=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text must be a str"):
        chunk_text(b"abc", chunk_tokens=10)  # type: ignore[arg-type]


def test_chunk_is_frozen() -> None:
    chunk = chunk_text("hello", chunk_tokens=10)[0]
    assert chunk == Chunk(index=0, count=1, text="hello", start=0, end=5)
    with pytest.raises(AttributeError):
        chunk.text = "other"  # type: ignore[misc]


def test_five_megabytes_are_chunked_completely() -> None:
    # Its speed (about 0.2 s here) is a benchmark figure, not asserted: timed tests flake.
    paragraph = (
        "The chunker splits a long document into parts that each fit a context window. "
        "It prefers paragraph breaks, then line breaks, then sentence ends.\n"
        "長い文書は複数のチャンクに分割されます。段落の区切りを優先します。\n\n"
    )
    text = (paragraph * (5_000_000 // len(paragraph) + 1))[:5_000_000]
    chunks = chunk_text(text, chunk_tokens=6000, overlap_tokens=200)
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    assert all(a.start < b.start <= a.end for a, b in itertools.pairwise(chunks))


# ---------------------------------------------------------------------------------------
# count_tokens

# Real counts of these texts, measured offline with tiktoken's cl100k_base, o200k_base,
# Llama-3, Qwen3 and a legacy Claude vocabulary; the largest of the five is kept. The
# estimate must not be below any of them.
MEASURED: list[tuple[str, int]] = [
    (
        "The chunker splits a long document into parts that each fit a model's context "
        "window. It prefers paragraph breaks, then line breaks, then the ends of sentences, "
        "and only cuts a word in two when nothing else fits.",
        45,
    ),
    (
        'def fib(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n    a, b = 0, 1\n'
        "    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
        51,
    ),
    (
        '{"id": "parts", "map": {"over": "context.document", "chunk_tokens": 6000, '
        '"overlap_tokens": 200}, "task": "Summarise part {{item.index}} of {{item.count}}"}',
        53,
    ),
    ("2023,1.5,-0.25,1000000\n2024,17.75,3.125,42\n2025,0.001,99.99,7", 60),
    (
        "长文档会被切分成若干块\uff0c每一块交给一个子智能体处理。"
        "切分时优先在段落之间断开\uff0c其次是换行和句号\uff0c最后才会在词语中间断开。",
        71,
    ),
    (
        "長い文書は複数のチャンクに分割され、それぞれのチャンクをサブエージェントが処理します。"
        "段落の区切りを優先し、次に改行、文末で区切ります。",
        74,
    ),
    ("긴 문서는 여러 조각으로 나뉘고, 각 조각은 하위 에이전트가 처리합니다.", 39),
    ("Длинный документ делится на части, и каждую часть обрабатывает отдельный агент.", 40),
    (
        "Ein langes Dokument wird in Abschnitte geteilt; jeder Abschnitt wird von einem "
        "eigenen Agenten zusammengefasst, möglichst an Absatzgrenzen.",
        39,
    ),
    ("Done \u2705 shipped \U0001f680 thanks \U0001f64f", 12),
    (
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5E"
        "rkJggg==",
        55,
    ),
]


@pytest.mark.parametrize(("text", "measured"), MEASURED, ids=lambda v: str(v)[:12])
def test_estimate_is_not_below_real_tokenizers(text: str, measured: int) -> None:
    estimate = count_tokens(text)
    assert estimate >= measured
    assert estimate <= 2 * measured, "conservative, but not wildly so"


def test_count_tokens_basics() -> None:
    assert count_tokens("") == 0
    assert count_tokens(" ") == 0
    assert count_tokens("a") == 1
    assert count_tokens("hello") == 2  # 10/12 for the word + 2/12 a letter, rounded up
    assert count_tokens("hello world") == 4  # 2 words x 10/12 + 10 letters x 2/12 = 40/12
    assert count_tokens("7") == 2  # the digit, and the number's own token
    assert count_tokens("\U0001f680") == 4  # the dearest single character
    assert count_tokens("\ud800") == count_tokens("\u4e00")  # a lone surrogate is counted
    with pytest.raises(TypeError, match="text must be a str"):
        count_tokens(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("shorter", "longer"),
    [
        ("word", "word word"),
        ("a sentence.", "a sentence. And another."),
        ("汉字", "汉字汉字"),
        ("12", "12345"),
        ("x", "x" * 24),
        ("  ", "         "),
    ],
)
def test_longer_text_costs_more(shorter: str, longer: str) -> None:
    assert count_tokens(shorter) < count_tokens(longer)


@settings(max_examples=300, deadline=None)
@given(text=TEXTS, data=st.data())
def test_estimate_monotone_and_cut_bounds(text: str, data: st.DataObject) -> None:
    """The invariants the chunker relies on, on the unrounded units."""
    units = chunking._units
    whole = units(text)
    i = data.draw(st.integers(0, len(text)), label="cut")
    j = data.draw(st.integers(i, len(text)), label="second cut")
    # Monotone: growing a text at either end never lowers its cost.
    assert units(text[:i]) <= units(text[:j]) <= whole
    assert units(text[j:]) <= units(text[i:]) <= whole
    # A text of n characters costs at least n - 1 units (lets the chunker skip long pieces).
    assert whole >= len(text) - 1
    # Costing the two sides of an arbitrary cut separately misses at most _cut_units and
    # adds at most _CUT_OVERCOUNT_UNITS.
    split = units(text[:i]) + units(text[i:])
    hidden = chunking._cut_units(text, i) if 0 < i < len(text) else 0
    assert hidden <= chunking._CUT_UNDERCOUNT_UNITS
    assert whole - hidden <= split <= whole + chunking._CUT_OVERCOUNT_UNITS
    # At a boundary nothing is missed.
    for pattern in chunking._BOUNDARY_PATTERNS:
        for match in pattern.finditer(text):
            b = match.end()
            assert units(text[:b]) + units(text[b:]) >= whole, (pattern.pattern, b)


@settings(max_examples=200, deadline=None)
@given(character=st.characters())
def test_one_character_costs_one_to_four_tokens(character: str) -> None:
    tokens = count_tokens(character)
    assert (0 if character == " " else 1) <= tokens <= 4


@given(text=st.text(max_size=400), chunk=st.integers(2, 40), data=st.data())
def test_count_chunks_agrees_with_chunk_text_and_stops_past_its_limit(
    text: str, chunk: int, data: st.DataObject
) -> None:
    overlap = data.draw(st.integers(0, chunk - 1))
    n = len(chunk_text(text, chunk_tokens=chunk, overlap_tokens=overlap))
    assert count_chunks(text, chunk_tokens=chunk, overlap_tokens=overlap) == n
    limit = data.draw(st.integers(0, 50))
    assert count_chunks(text, chunk_tokens=chunk, overlap_tokens=overlap, limit=limit) == min(
        n, limit + 1
    )


def test_counting_a_huge_text_into_tiny_chunks_stops_early(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = chunking._chunk_end
    cut = {"n": 0}

    def counted(text: str, start: int, budget: int) -> int:
        cut["n"] += 1
        return real(text, start, budget)

    monkeypatch.setattr(chunking, "_chunk_end", counted)
    text = "字" * 3_000_000  # about 280,000 chunks of 16 tokens
    assert count_chunks(text, chunk_tokens=16, limit=1000) == 1001
    assert cut["n"] <= 1002  # it stopped after the 1,001st chunk, not at the end
