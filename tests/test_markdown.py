"""Markdown answers to styled, pre-wrapped lines: shapes, styles and the guarantees."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prompt_toolkit.utils import get_cwidth

from kindlessh import _markdown
from kindlessh._markdown import render_markdown

Line = list[tuple[str, str]]

# A short answer with a bit of everything, cut at every character by the prefix test.
SAMPLE = (
    "## Setup\n\n"
    "Install **kindlessh** with *pip*, then run `kindlessh --help`:\n\n"
    "1. Create a key.\n"
    "2. Start the server:\n\n"
    "   ```bash\n"
    "   kindlessh serve --port 2222\n"
    "   ```\n\n"
    "| Option | Default |\n"
    "|---|---|\n"
    "| `--port` | 2222 |\n\n"
    "> See [the docs](https://example.com/docs) for more.\n"
)

TABLE = (
    "| Name | Age | City | Occupation |\n"
    "|---|--:|---|---|\n"
    "| Alice Wonderland | 30 | Paris | Software engineer |\n"
    "| Bob | 4 | Reykjavik | Professional procrastinator |\n"
)

PROSE = (
    "The three primary colors of traditional color theory are red, yellow, and blue. "
    "In light, the additive primaries are red, green and blue."
)

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_STYLE_WORDS = {"bold", "underline", "reverse"}


def texts(lines: list[Line]) -> list[str]:
    """The visible text of each line."""
    return ["".join(text for _, text in line) for line in lines]


def styles(lines: list[Line]) -> Iterator[str]:
    for line in lines:
        for style, _ in line:
            yield style


def styled(lines: list[Line], style: str) -> list[str]:
    """The texts shown in exactly ``style``."""
    return [text for line in lines for s, text in line if s == style]


def check_contract(lines: list[Line], width: int, color: bool) -> None:
    """The guarantees every rendering keeps, whatever the input."""
    for line in lines:
        assert sum(get_cwidth(text) for _, text in line) <= width
        for style, text in line:
            assert text, "no empty fragments"
            assert not _CONTROL.search(text)
            for word in style.split():
                if color and word.startswith("fg:ansi"):
                    continue
                assert word in _STYLE_WORDS, style
        if line:
            assert not line[-1][1].endswith(" ")
    if lines:
        assert lines[0] and lines[-1], "no leading or trailing blank line"


def test_headings_are_bold_and_left_aligned() -> None:
    lines = render_markdown("# Title\n\n## Part\n\n### Detail", 54)
    assert lines == [
        [("bold underline", "Title")],
        [],
        [("bold underline", "Part")],
        [],
        [("bold", "Detail")],
    ]


def test_strong_is_bold_and_emphasis_underlined() -> None:
    lines = render_markdown("A **strong** and *soft* word, _also soft_.", 54)
    assert lines == [
        [
            ("", "A "),
            ("bold", "strong"),
            ("", " and "),
            ("underline", "soft"),
            ("", " word, "),
            ("underline", "also soft"),
            ("", "."),
        ]
    ]


def test_bullet_list_has_markers_and_a_hanging_indent() -> None:
    lines = render_markdown("- one\n- two items that wrap onto the next line", 24)
    assert texts(lines) == [" • one", " • two items that wrap", "   onto the next line"]
    assert styled(lines, "bold") == [" • ", " • "]


def test_numbered_list_keeps_numbers_and_aligns_them() -> None:
    source = "".join(f"{n}. item {n}\n" for n in range(1, 11))
    lines = texts(render_markdown(source, 54))
    assert lines[0] == "  1. item 1"
    assert lines[9] == " 10. item 10"
    wrapped = texts(render_markdown("3. a numbered item long enough to wrap", 20))
    assert wrapped == [" 3. a numbered item", "    long enough to", "    wrap"]


def test_nested_list_is_indented_under_its_parent() -> None:
    lines = texts(render_markdown("- outer\n  - inner\n    - innermost\n- next", 54))
    assert lines == [" • outer", "    • inner", "       • innermost", " • next"]


def test_deep_nesting_on_a_narrow_screen_stays_within_width() -> None:
    for source in ("- " * 30 + "deep", "> " * 30 + "deep", "1. " * 20 + "deep"):
        lines = render_markdown(source, 20)
        check_contract(lines, 20, color=False)
        assert "deep" in " ".join(texts(lines))


def test_block_quote_has_a_bar_on_every_line() -> None:
    source = "> A quoted sentence that is long enough to wrap.\n>\n> Second paragraph."
    lines = texts(render_markdown(source, 30))
    assert lines == [
        "│ A quoted sentence that is",
        "│ long enough to wrap.",
        "│",
        "│ Second paragraph.",
    ]


def test_fenced_code_is_indented_plain_and_unwrapped() -> None:
    source = "Code:\n\n```python\ndef f(x):\n\n    return x + 1\n```\n\nAfter."
    lines = render_markdown(source, 54)
    assert texts(lines) == ["Code:", "", "  def f(x):", "", "      return x + 1", "", "After."]
    assert set(styles(lines)) == {""}  # 1-bit mode: code shows plain


def test_code_in_colour_has_foregrounds_only() -> None:
    lines = render_markdown("```python\ndef f(x):\n    return 'x'  # note\n```", 54, color=True)
    assert texts(lines) == ["  def f(x):", "      return 'x'  # note"]
    found = set(styles(lines))
    assert any("fg:ansi" in style for style in found)
    check_contract(lines, 54, color=True)


def test_unclosed_fence_is_code_to_the_end() -> None:
    lines = texts(render_markdown("Try:\n\n```python\nfor i in range(3):\n    pri", 54))
    assert lines == ["Try:", "", "  for i in range(3):", "      pri"]


def test_long_code_line_wraps_with_a_deeper_hang() -> None:
    line = "    result = compute(alpha, beta, gamma, delta, epsilon, zeta)"
    lines = texts(render_markdown(f"```\n{line}\n```", 30))
    assert all(get_cwidth(text) <= 30 for text in lines)
    assert lines[0].startswith("      result")
    assert all(text.startswith("        ") for text in lines[1:])  # 2 + 4 + 2 cells
    assert " ".join(t.strip() for t in lines).split() == line.split()


def test_inline_code_is_reverse_in_1_bit_and_coloured_in_colour() -> None:
    source = "Run `ls -la` now."
    assert render_markdown(source, 54) == [[("", "Run "), ("reverse", "ls -la"), ("", " now.")]]
    assert ("fg:ansimagenta", "ls -la") in render_markdown(source, 54, color=True)[0]


def test_link_shows_text_and_target_without_osc8() -> None:
    source = "See [the docs](https://example.com/docs) or <https://example.org>."
    for color in (False, True):
        lines = render_markdown(source, 80, color=color)
        joined = "\n".join(texts(lines))
        assert "\x1b" not in joined and "\x07" not in joined
        assert joined == "See the docs (https://example.com/docs) or https://example.org."
        assert all("underline" in s for line in lines for s, t in line if t == "the docs")
    assert ("underline", "https://example.org") in render_markdown(source, 80)[0]


def test_table_fits_at_80_columns() -> None:
    lines = texts(render_markdown(TABLE, 80))
    assert lines[0].split() == ["Name", "Age", "City", "Occupation"]
    assert set(lines[1]) == {"─"}
    assert lines[2].split() == ["Alice", "Wonderland", "30", "Paris", "Software", "engineer"]
    assert "Professional procrastinator" in lines[3]


def test_table_too_wide_becomes_records_within_width() -> None:
    lines = render_markdown(TABLE, 30)
    check_contract(lines, 30, color=False)
    shown = texts(lines)
    assert shown[:4] == [
        "Name: Alice Wonderland",
        "Age: 30",
        "City: Paris",
        "Occupation: Software engineer",
    ]
    words = " ".join(shown).split()
    for word in TABLE.replace("|", " ").split():
        if set(word) - set("-:"):
            assert word in words or f"{word}:" in words


def test_long_word_is_cut_and_other_words_are_not() -> None:
    lines = texts(render_markdown("short " + "x" * 70 + " end", 30))
    assert lines == ["short", "x" * 30, "x" * 30, "x" * 10 + " end"]
    for width in (12, 20, 54):
        shown = texts(render_markdown(PROSE, width))
        assert " ".join(shown).split() == PROSE.split()


def test_wide_characters_count_two_cells() -> None:
    source = "漢字かな " * 12 + "😀 smile " * 6
    for width in (9, 21, 54):
        lines = render_markdown(source, width)
        check_contract(lines, width, color=False)
        assert "".join(texts(lines)).replace(" ", "") == source.replace(" ", "")
    for width in (1, 2):
        check_contract(render_markdown("漢 😀", width), width, color=False)


def test_1_bit_mode_has_no_colours() -> None:
    lines = render_markdown(SAMPLE + "\n```python\nimport os\n```\n\n---\n", 54)
    for style in styles(lines):
        assert "fg:" not in style and "bg:" not in style
        assert set(style.split()) <= _STYLE_WORDS


def test_colour_mode_uses_named_ansi_colours_only() -> None:
    lines = render_markdown(SAMPLE + "\n```python\nimport os\n```\n\n---\n", 54, color=True)
    found = set(styles(lines))
    assert any("fg:ansi" in style for style in found)
    for style in found:
        assert "#" not in style and "bg:" not in style
    check_contract(lines, 54, color=True)


def test_strikethrough_html_and_images_stay_visible() -> None:
    lines = texts(
        render_markdown("~~old~~ <b>new</b> ![a chart](c.png)\n\n<div>\nblock\n</div>", 54)
    )
    assert lines == ["~~old~~ <b>new</b> [image: a chart]", "", "<div>", "block", "</div>"]


def test_rule_spans_the_width() -> None:
    assert texts(render_markdown("above\n\n---\n\nbelow", 20)) == [
        "above",
        "",
        "─" * 20,
        "",
        "below",
    ]


def test_nothing_fits_in_no_width() -> None:
    assert render_markdown("text", 0) == []
    assert render_markdown("", 54) == []


def test_rich_failure_falls_back_to_plain_wrapped_text(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(text: str, width: int, color: bool) -> list[Line]:
        raise RuntimeError("boom")

    _markdown._render_block.cache_clear()
    monkeypatch.setattr(_markdown, "_render_rich", broken)
    try:
        lines = render_markdown("**Bold** words here\n\n" + "y" * 25, 10)
    finally:
        _markdown._render_block.cache_clear()
    assert texts(lines) == ["**Bold**", "words here", "", "y" * 10, "y" * 10, "y" * 5]


@pytest.mark.parametrize("width", [20, 54])
def test_every_prefix_of_an_answer_renders(width: int) -> None:
    for end in range(len(SAMPLE) + 1):
        check_contract(render_markdown(SAMPLE[:end], width), width, color=False)
    check_contract(render_markdown(SAMPLE, width, color=True), width, color=True)


def test_cutting_into_blocks_changes_nothing() -> None:
    """Rendering piece by piece (for the cache) matches rendering the whole at once."""
    for end in range(0, len(SAMPLE) + 1, 7):
        prefix = SAMPLE[:end]
        whole = [list(line) for line in _markdown._render_block(prefix.rstrip(), 54, False)]
        assert render_markdown(prefix, 54) == whole


def test_a_fence_keeps_its_blank_lines_and_column_0_lines_together() -> None:
    code = "```python\nimport os\n\ndef f():\n    pass\n\nf()\n```"
    assert [block.rstrip() for block in _markdown._blocks(f"{code}\n\nDone.")] == [code, "Done."]
    unclosed = "```\na\n\nb\n\nc"
    assert _markdown._blocks(unclosed) == [unclosed]


_ALPHABET = st.sampled_from(list("abc xyz 123\n\n*_`#|->") + ["```", "1. ", "- ", "> ", "  "])


@settings(max_examples=150, deadline=None)
@given(
    text=st.lists(_ALPHABET, max_size=60).map("".join),
    width=st.integers(min_value=1, max_value=80),
    color=st.booleans(),
)
def test_random_markdownish_text_keeps_the_contract(text: str, width: int, color: bool) -> None:
    check_contract(render_markdown(text, width, color=color), width, color)


def test_a_single_line_break_is_kept() -> None:
    """As in chat apps: a poem or an address keeps its lines; a blank line still makes
    a new paragraph."""
    lines = texts(render_markdown("Roses are red,\nviolets are *blue*.\n\nNext.", 54))
    assert lines == ["Roses are red,", "violets are blue.", "", "Next."]
