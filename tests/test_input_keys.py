"""The key reader: the keys of every sequence, bounded sequences and pastes, the same keys
however the text is split."""

from __future__ import annotations

import time

import pytest
from prompt_toolkit.keys import Keys

from kindlessh._input import HIGH_WATER, KEYS_PER_TURN, ChannelInput
from kindlessh._keyreader import MAX_SEQUENCE, PASTE_BURST, KeyReader, RefusedPaste


def read(*pieces: str, max_paste: int = 100, flush: bool = False) -> list[tuple[object, str]]:
    reader = KeyReader(max_paste)
    for piece in pieces:
        reader.feed(piece)
    if flush:
        reader.flush()
    return [(k.key, k.data) for k in reader.keys]


def every_split(text: str) -> list[list[str]]:
    """``text`` whole, one character at a time, and cut in two at every place."""
    return [[text], list(text)] + [[text[:i], text[i:]] for i in range(1, len(text))]


KEYS = [
    ("ab", [("a", "a"), ("b", "b")]),
    ("\x1b[A", [(Keys.Up, "\x1b[A")]),
    ("\x1b[1;5C", [(Keys.ControlRight, "\x1b[1;5C")]),
    ("\x1bOP", [(Keys.F1, "\x1bOP")]),
    ("\x03\r", [(Keys.ControlC, "\x03"), (Keys.ControlM, "\r")]),
    ("\x1bx", [(Keys.Escape, "\x1b"), ("x", "x")]),  # Alt-x
    ("\x1b[3~x", [(Keys.Delete, "\x1b[3~"), ("x", "x")]),
    ("\x1b[200~a\rb\x1b[201~c", [(Keys.BracketedPaste, "a\rb"), ("c", "c")]),
]


@pytest.mark.parametrize(("text", "keys"), KEYS)
def test_the_keys_of_a_terminal_whatever_the_split(text: str, keys: list[object]) -> None:
    for pieces in every_split(text):
        assert read(*pieces) == keys, pieces


@pytest.mark.parametrize(
    "sequence",
    [
        "\x1b[" + "1" * 20_000 + "m",  # far longer than any key
        "\x1b[" + "1;" * MAX_SEQUENCE + "A",  # just over the bound, a key's final
        "\x1b[99;99;99~",  # no key prompt-toolkit knows
        "\x1b[12;40R",  # a cursor position report kindlessh never asked for
        "\x1b]11;rgb:0000/0000/0000\x07",  # an OSC reply ended by BEL
        "\x1bP1$r0m\x1b\\",  # a DCS reply ended by ST
        "\x1b]" + "x" * 5000 + "\x1b\\",  # a long string, dropped unkept
    ],
)
def test_a_sequence_that_is_no_key_is_dropped_whatever_the_split(sequence: str) -> None:
    text = "a" + sequence + "b"
    splits = every_split(text) if len(text) < 200 else [[text], [text[:7], text[7:]]]
    for pieces in splits:
        assert read(*pieces) == [("a", "a"), ("b", "b")], pieces[:3]


def test_the_bound_holds_across_reads_one_character_at_a_time() -> None:
    reader = KeyReader(100)
    reader.feed("\x1b[")
    for _ in range(50_000):
        reader.feed("1")
        assert len(reader._seq) <= MAX_SEQUENCE
    reader.feed("mz")
    assert [k.data for k in reader.keys] == ["z"]


def test_a_long_sequence_costs_linear_time() -> None:
    def cost(digits: int) -> float:
        start = time.process_time()
        read("\x1b[" + "1" * digits + "m")
        return time.process_time() - start

    # Ten times the length, not a hundred times the time (a generous margin for noise).
    assert cost(2_000_000) < 30 * max(cost(200_000), 0.001)


def test_a_lone_escape_and_alt_bracket_come_out_on_flush() -> None:
    assert read("\x1b", flush=True) == [(Keys.Escape, "\x1b")]
    assert read("\x1b[", flush=True) == [(Keys.Escape, "\x1b"), ("[", "[")]
    assert read("\x1b[1;", flush=True) == []  # half a sequence: nobody typed that


def test_a_paste_over_the_bound_is_refused_with_its_size_whatever_the_split() -> None:
    text = "\x1b[200~" + "p" * 150 + "\x1b[201~q"
    for pieces in every_split(text):
        keys = read(*pieces, max_paste=100)
        (paste, _), (last, _) = keys[0], keys[1]
        reader = KeyReader(100)
        for piece in pieces:
            reader.feed(piece)
        data = reader.keys[0].data
        assert paste == Keys.BracketedPaste and isinstance(data, RefusedPaste)
        assert data.size == 150 and data == ""
        assert last == "q"


def test_a_paste_that_never_ends_keeps_only_its_size() -> None:
    reader = KeyReader(1000)
    reader.feed("\x1b[200~")
    for _ in range(1000):
        reader.feed("p" * 10_000)
    assert reader._paste == [] and reader._paste_size + len(reader._tail) == 10_000_000
    assert reader.keys == []


def test_a_long_run_of_text_is_one_paste() -> None:
    assert read("x" * PASTE_BURST) == [(Keys.BracketedPaste, "x" * PASTE_BURST)]
    assert len(read("x" * (PASTE_BURST - 1))) == PASTE_BURST - 1


async def test_keys_go_to_the_application_a_few_a_turn_and_a_flood_pauses_the_channel() -> None:
    calls: list[str] = []
    chan = ChannelInput(pause=lambda: calls.append("pause"), resume=lambda: calls.append("resume"))
    with chan.attach(lambda: None):
        chan.send_text("a\x01" * HIGH_WATER)  # keys, no paste
        assert calls == ["pause"]
        batches = []
        while chan.waiting:
            batches.append(len(chan.read_keys()))
        assert max(batches) == KEYS_PER_TURN
        assert sum(batches) == 2 * HIGH_WATER
        assert calls == ["pause", "resume"]
    chan.close()
    assert chan.waiting == 0
