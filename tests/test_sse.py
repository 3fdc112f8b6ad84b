"""The sans-I/O SSE decoder: Gemini fixtures under every split, and WHATWG conformance."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx_sse._decoders as httpx_sse_decoders
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kindlessh._errors import StreamProtocolError, TruncatedStream
from kindlessh._sse import ServerSentEvent, SSEDecoder, SSEEventTooLarge, SSETruncated

FIXTURES = Path(__file__).parent / "fixtures" / "gemini"
MANIFEST: dict[str, Any] = json.loads((FIXTURES / "MANIFEST.json").read_text())
SSE_FIXTURES = sorted(path.name for path in FIXTURES.glob("*.sse"))
BODIES = {name: (FIXTURES / name).read_bytes() for name in SSE_FIXTURES}


@dataclass(frozen=True)
class Outcome:
    """Everything a body gives: events, unparsed text, and how close() ended."""

    events: tuple[ServerSentEvent, ...]
    unparsed: str
    closed_with: type[BaseException] | None
    partial: str | None


def decode(chunks: list[bytes], max_event_size: int = 1 << 20) -> Outcome:
    decoder = SSEDecoder(max_event_size)
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    closed_with: type[BaseException] | None = None
    partial: str | None = None
    try:
        events += decoder.close()
    except SSETruncated as exc:
        closed_with, partial = type(exc), exc.partial
    return Outcome(tuple(events), decoder.take_unparsed(), closed_with, partial)


def split_at(body: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted({min(max(cut, 0), len(body)) for cut in cuts}), len(body)]
    return [body[a:b] for a, b in zip(points, points[1:], strict=False)]


def events_of(body: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    return decoder.feed(body) + decoder.close()


# ----- the Gemini fixtures ----------------------------------------------------------------


@pytest.mark.parametrize("name", SSE_FIXTURES)
def test_fixture_same_outcome_under_every_split(name: str) -> None:
    body = BODIES[name]
    whole = decode([body])
    assert decode([body[i : i + 1] for i in range(len(body))]) == whole
    for cut in range(len(body) + 1):
        assert decode([body[:cut], body[cut:]]) == whole, cut
    rng = random.Random(name)
    for _ in range(50):
        cuts = [rng.randrange(len(body) + 1) for _ in range(rng.randrange(1, 40))]
        assert decode(split_at(body, cuts)) == whole, cuts
    # Empty feeds change nothing either.
    assert decode([b"", *[body[i : i + 7] for i in range(0, len(body), 7)], b""]) == whole


@pytest.mark.parametrize("name", SSE_FIXTURES)
def test_fixture_event_count_matches_manifest(name: str) -> None:
    expect = MANIFEST[name]["expect"]
    outcome = decode([BODIES[name]])
    if "events" in expect:
        assert len(outcome.events) == expect["events"]
    for event in outcome.events:
        assert event.event == "message"
        assert event.id == ""
        assert event.retry is None
        if name != "10_malformed_json_event.sse":
            assert isinstance(json.loads(event.data), dict)


@pytest.mark.parametrize("name", SSE_FIXTURES)
def test_fixture_events_agree_with_httpx_sse(name: str) -> None:
    lines = httpx_sse_decoders.SSELineDecoder()
    reference = httpx_sse_decoders.SSEDecoder()
    text = BODIES[name].decode("utf-8")
    expected = []
    for line in lines.decode(text):
        sse = reference.decode(line)
        if sse is not None:
            expected.append((sse.event, sse.data, sse.id, sse.retry))
    got = [(e.event, e.data, e.id, e.retry) for e in decode([BODIES[name]]).events]
    assert got == expected


def test_fixture_midstream_error_lands_in_unparsed_text() -> None:
    outcome = decode([BODIES["09_midstream_error_503.sse"]])
    assert outcome.closed_with is None
    body = json.loads(outcome.unparsed)
    assert isinstance(body, dict)
    assert body["error"]["code"] == 503
    assert body["error"]["status"] == "UNAVAILABLE"


def test_fixture_midstream_error_is_visible_before_close() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(BODIES["09_midstream_error_503.sse"])
    assert len(events) == 2
    assert json.loads(decoder.pending_unparsed)["error"]["code"] == 503
    assert json.loads(decoder.pending_unparsed)["error"]["code"] == 503  # not consumed
    assert json.loads(decoder.take_unparsed())["error"]["code"] == 503
    assert decoder.take_unparsed() == ""
    assert decoder.pending_unparsed == ""
    assert decoder.close() == []


def test_fixture_truncated_stream_raises_on_close() -> None:
    body = BODIES["14_truncated_no_terminator.sse"]
    decoder = SSEDecoder()
    assert len(decoder.feed(body)) == 1
    with pytest.raises(SSETruncated) as info:
        decoder.close()
    assert isinstance(info.value, TruncatedStream)
    assert "broke off" in str(info.value)
    assert info.value.partial.startswith("data: {")
    assert "Canberra" in info.value.partial
    assert decode([body]).closed_with is SSETruncated


@pytest.mark.parametrize("name", SSE_FIXTURES)
def test_fixture_with_crlf_lf_and_cr_line_ends_alike(name: str) -> None:
    body = BODIES[name]
    as_lf = body.replace(b"\r\n", b"\n")
    as_cr = as_lf.replace(b"\n", b"\r")
    as_crlf = as_lf.replace(b"\n", b"\r\n")
    whole = decode([as_lf])
    assert decode([as_cr]) == whole
    assert decode([as_crlf]) == whole
    assert decode([as_crlf[i : i + 1] for i in range(len(as_crlf))]) == whole


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(SSE_FIXTURES),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=60),
    bom=st.booleans(),
)
def test_any_split_gives_the_same_outcome(name: str, cuts: list[int], bom: bool) -> None:
    body = (b"\xef\xbb\xbf" if bom else b"") + BODIES[name]
    assert decode(split_at(body, cuts)) == decode([body])


def reference(body: bytes) -> Outcome:
    """A plain, whole-body reading of the spec (plus this decoder's unparsed/close rules)."""
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    lines = re.split(rb"\r\n|\r|\n", body)
    tail = lines.pop().decode("utf-8", "replace")
    events: list[ServerSentEvent] = []
    data: list[str] = []
    event_type, last_id, retry, unparsed = "", "", None, ""
    for raw in lines:
        line = raw.decode("utf-8", "replace")
        if not line:
            if data:
                events.append(
                    ServerSentEvent("\n".join(data), event_type or "message", last_id, retry)
                )
            data, event_type = [], ""
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            event_type = value
        elif name == "id":
            last_id = last_id if "\0" in value else value
        elif name == "retry":
            if value and set(value) <= set("0123456789"):
                retry = int(value)
        else:
            unparsed += line + "\n"
    cut = ""
    if tail and not tail.startswith(":"):
        name, colon, _ = tail.partition(":")
        fields = ("data", "event", "id", "retry")
        if name in fields or (not colon and any(f.startswith(name) for f in fields)):
            cut = tail
        else:
            unparsed += tail + "\n"
    if not cut and not data:
        return Outcome(tuple(events), unparsed, None, None)
    partial = "\n".join(([("\n".join(data))] if data else []) + ([cut] if cut else []))
    return Outcome(tuple(events), unparsed, SSETruncated, partial)


TOKENS = [
    b"data", b"event", b"id", b"retry", b"dat", b"ev", b"x", b"5", b":", b": ", b" ",
    b"\r", b"\n", b"\r\n", b"\0", b"\xef\xbb\xbf", b"\xe2\x82", b"\xac", b"\xff",
    "\u2028".encode(), b"\x0c", b"{", b"}",
]  # fmt: skip


LINE = st.tuples(
    st.sampled_from(
        [b"data", b"data:", b"data: ", b"event: ", b"id: ", b"retry: ", b":", b"", b"dat", b"{"]
    ),
    st.lists(st.sampled_from(TOKENS), max_size=4),
    st.sampled_from([b"\r", b"\n", b"\r\n", b"\n", b"\r\n", b""]),
)


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(LINE, max_size=12),
    soup=st.lists(st.sampled_from(TOKENS), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=20),
)
def test_random_bodies_match_the_reference(
    lines: list[tuple[bytes, list[bytes], bytes]], soup: list[bytes], cuts: list[int]
) -> None:
    body = b"".join(start + b"".join(value) + end for start, value, end in lines)
    body += b"".join(soup)
    expected = reference(body)
    assert decode(split_at(body, cuts)) == expected
    for cut in range(len(body) + 1):
        assert decode([body[:cut], body[cut:]]) == expected


def test_events_are_ordinary_frozen_values() -> None:
    (event,) = events_of(b"event: e\nid: 1\nretry: 2\ndata: a\n\n")
    assert event == ServerSentEvent("a", "e", "1", 2)
    assert hash(event) == hash(ServerSentEvent("a", "e", "1", 2))
    assert dataclasses.astuple(event) == ("a", "e", "1", 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.data = "b"  # type: ignore[misc]


# ----- WHATWG conformance -----------------------------------------------------------------


def test_bom_is_stripped_once_at_the_start() -> None:
    body = b"\xef\xbb\xbfdata: a\n\n"
    assert events_of(body) == [ServerSentEvent("a")]
    for cut in range(len(body) + 1):
        assert decode([body[:cut], body[cut:]]).events == (ServerSentEvent("a"),)
    assert decode([body[i : i + 1] for i in range(len(body))]).events == (ServerSentEvent("a"),)
    # Only one: a second BOM makes the field name "\ufeffdata", which is unknown.
    twice = decode([b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n"])
    assert twice.events == ()
    assert twice.unparsed == "\ufeffdata: a\n"
    # Not at the start: a BOM is an ordinary character.
    assert events_of(b"data: \xef\xbb\xbfa\n\n") == [ServerSentEvent("\ufeffa")]


def test_partial_bom_alone_is_not_lost() -> None:
    assert decode([b"\xef", b"\xbb"]).unparsed == decode([b"\xef\xbb"]).unparsed != ""
    assert decode([b"\xef\xbb\xbf"]) == Outcome((), "", None, None)


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_every_line_end(eol: bytes) -> None:
    body = b"data: a" + eol + b"data: b" + eol + eol + b"data: c" + eol + eol
    expected = [ServerSentEvent("a\nb"), ServerSentEvent("c")]
    assert events_of(body) == expected
    assert list(decode([body[i : i + 1] for i in range(len(body))]).events) == expected


def test_mixed_line_ends() -> None:
    body = b"data: a\rdata: b\ndata: c\r\n\r\ndata: d\n\r\r\n"
    assert events_of(body) == [ServerSentEvent("a\nb\nc"), ServerSentEvent("d")]
    # "\r\r\n" is two line ends, "\n\r" is two line ends.
    assert events_of(b"data: x\r\r\ndata: y\n\r") == [ServerSentEvent("x"), ServerSentEvent("y")]


def test_crlf_split_across_feeds_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []
    # Had the "\n" counted as a second line end, "a" would have been dispatched alone.
    assert decoder.feed(b"\n\r") == [ServerSentEvent("a\nb")]
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"data: c\r") == []
    assert decoder.feed(b"") == []  # an empty feed keeps the pending "\r"
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r") == [ServerSentEvent("c")]
    assert decoder.close() == []


def test_lone_cr_then_data_is_not_swallowed() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"data: b\r") == []
    assert decoder.feed(b"\r") == [ServerSentEvent("a\nb")]


def test_multiline_data_is_joined_with_newline() -> None:
    assert events_of(b"data: one\ndata:two\ndata:  three\ndata\ndata:\n\n") == [
        ServerSentEvent("one\ntwo\n three\n\n")
    ]


def test_data_without_colon_is_an_empty_value() -> None:
    assert events_of(b"data\n\n") == [ServerSentEvent("")]
    assert events_of(b"data\ndata\n\n") == [ServerSentEvent("\n")]


def test_data_without_space_and_only_one_space_stripped() -> None:
    assert events_of(b"data:x\n\n") == [ServerSentEvent("x")]
    assert events_of(b"data:  x \n\n") == [ServerSentEvent(" x ")]
    assert events_of(b"data:\tx\n\n") == [ServerSentEvent("\tx")]
    assert events_of(b"data: a:b: c\n\n") == [ServerSentEvent("a:b: c")]


def test_comments_are_ignored() -> None:
    outcome = decode([b": keep-alive\n:\ndata: a\n:comment inside\ndata: b\n\n:tail"])
    assert outcome == Outcome((ServerSentEvent("a\nb"),), "", None, None)


def test_no_dispatch_when_data_buffer_is_empty() -> None:
    assert events_of(b"\n\n\n") == []
    # The event type is reset by the empty dispatch.
    assert events_of(b"event: ping\n\ndata: a\n\n") == [ServerSentEvent("a")]
    assert events_of(b"id: 1\nretry: 5\n\n") == []


def test_event_type() -> None:
    assert events_of(b"event: update\ndata: a\n\ndata: b\n\n") == [
        ServerSentEvent("a", event="update"),
        ServerSentEvent("b"),
    ]
    assert events_of(b"event\ndata: a\n\n") == [ServerSentEvent("a")]
    assert events_of(b"event: a\nevent: b\ndata: x\n\n") == [ServerSentEvent("x", event="b")]


def test_id_persists_and_nul_is_ignored() -> None:
    body = b"id: 1\ndata: a\n\ndata: b\n\nid: 2\0x\ndata: c\n\nid\ndata: d\n\n"
    assert events_of(body) == [
        ServerSentEvent("a", id="1"),
        ServerSentEvent("b", id="1"),
        ServerSentEvent("c", id="1"),
        ServerSentEvent("d", id=""),
    ]


def test_retry_only_with_ascii_digits() -> None:
    body = (
        b"retry: 1500\ndata: a\n\n"
        b"retry: 15x\ndata: b\n\n"
        b"retry: -1\ndata: c\n\n"
        b"retry: \xd9\xa3\ndata: d\n\n"  # ARABIC-INDIC DIGIT THREE is no ASCII digit
        b"retry:\ndata: e\n\n"
        b"retry: 7\ndata: f\n\n"
    )
    assert [event.retry for event in events_of(body)] == [1500, 1500, 1500, 1500, 1500, 7]


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u0085", "\x0c", "\x0b", "\x1c", "\x1e"])
def test_unicode_line_separators_stay_inside_data(char: str) -> None:
    text = f"a{char}b"
    body = b"data: " + text.encode() + b"\n\n"
    assert events_of(body) == [ServerSentEvent(text)]
    assert decode([body[i : i + 1] for i in range(len(body))]).events == (ServerSentEvent(text),)


def test_multibyte_character_split_across_feeds() -> None:
    text = "€ 😀 é ✓"
    body = b"data: " + text.encode() + b"\n\n"
    for cut in range(len(body) + 1):
        assert decode([body[:cut], body[cut:]]).events == (ServerSentEvent(text),), cut
    assert decode([body[i : i + 1] for i in range(len(body))]).events == (ServerSentEvent(text),)


def test_invalid_utf8_is_replaced_per_line() -> None:
    assert events_of(b"data: a\xffb\ndata: \xe2\x82\ndata: \xac\n\n") == [
        ServerSentEvent("a\ufffdb\n\ufffd\n\ufffd")
    ]


def test_unknown_fields_go_to_unparsed_text() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"foo: bar\ndata: a\nDATA: b\n\n{\n") == [ServerSentEvent("a")]
    assert decoder.pending_unparsed == "foo: bar\nDATA: b\n{\n"
    assert decoder.take_unparsed() == "foo: bar\nDATA: b\n{\n"
    assert decoder.feed(b'  "x": 1\n}') == []
    assert decoder.pending_unparsed == '  "x": 1\n'
    assert decoder.close() == []
    assert decoder.take_unparsed() == '  "x": 1\n}\n'


def test_unparsed_text_keeps_its_line_ends_as_newlines() -> None:
    assert decode([b'{\r\n  "a": 1\r}']).unparsed == '{\n  "a": 1\n}\n'


# ----- end of stream ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "partial"),
    [
        (b"data: a\n", "a"),  # data not dispatched
        (b"data: a\ndata: b", "a\ndata: b"),  # and a cut data line
        (b'data: {"x', 'data: {"x'),  # a cut data line alone
        (b"event: x", "event: x"),
        (b"id: 7", "id: 7"),
        (b"retry: 10", "retry: 10"),
        (b"data", "data"),  # a valid line, but its end never came
        (b"dat", "dat"),  # maybe the start of one
        (b"data: a\n\ndata: b\n:tail", "b"),
        (b"data: a\n{", "a"),  # the "{" goes to the unparsed text
    ],
)
def test_close_inside_an_event_raises(body: bytes, partial: str) -> None:
    for chunks in ([body], [body[i : i + 1] for i in range(len(body))]):
        decoder = SSEDecoder()
        for chunk in chunks:
            decoder.feed(chunk)
        with pytest.raises(SSETruncated) as info:
            decoder.close()
        assert info.value.partial == partial
        assert str(info.value) == "The answer stream broke off in the middle of a message."


@pytest.mark.parametrize(
    ("body", "unparsed"),
    [
        (b"data: a\n\n}", "}\n"),
        (b'data: a\n\n  "code": 503', '  "code": 503\n'),
        (b"data: a\n\ndatum: x", "datum: x\n"),
        (b"data: a\n\n: keep-alive", ""),
        (b"data: a\n\nevent: x\n", ""),  # a type with no data is no event
        (b"data: a\n\n", ""),
        (b"", ""),
    ],
)
def test_close_outside_an_event_returns_nothing(body: bytes, unparsed: str) -> None:
    decoder = SSEDecoder()
    decoder.feed(body)
    assert decoder.close() == []
    assert decoder.take_unparsed() == unparsed


def test_unparsed_tail_is_kept_even_when_close_raises() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n{\n}")
    with pytest.raises(SSETruncated):
        decoder.close()
    assert decoder.take_unparsed() == "{\n}\n"


def test_feed_after_close_raises_and_close_is_idempotent() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n\n")
    assert decoder.close() == []
    assert decoder.close() == []
    with pytest.raises(RuntimeError):
        decoder.feed(b"data: b\n\n")


# ----- bounds -----------------------------------------------------------------------------


def feed_all(decoder: SSEDecoder, chunks: list[bytes]) -> list[ServerSentEvent]:
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.close()


def splits(body: bytes) -> list[list[bytes]]:
    """The body whole, one byte at a time, and in 100-byte chunks."""
    return [
        [body],
        [body[i : i + 1] for i in range(len(body))],
        [body[i : i + 100] for i in range(0, len(body), 100)],
    ]


@pytest.mark.parametrize(
    "body",
    [
        b"data: " + b"x" * 1024 + b"\n\n",  # one long data line
        b"data: " + b"x" * 1024,  # ... still waiting for its end
        b"data: x\n" * 513 + b"\n",  # many data lines
        b"data: x\n" * 300 + b"data: " + b"y" * 500,  # many, then a long unfinished one
        b"event: " + b"x" * 1024 + b"\n",  # one long field line
        b": " + b"x" * 1024 + b"\n",  # one long comment
        b"x" * 1025,  # an unknown line without end
        b"{\n" * 513,  # too much unparsed text
        b"datum: " + b"x" * 1024 + b"\n",
    ],
)
def test_too_large_raises_however_split(body: bytes) -> None:
    for chunks in splits(body):
        decoder = SSEDecoder(max_event_size=1024)
        with pytest.raises(SSEEventTooLarge) as info:
            feed_all(decoder, chunks)
        assert isinstance(info.value, StreamProtocolError)
        assert "larger than 1 KiB" in str(info.value)
        with pytest.raises(RuntimeError):
            decoder.feed(b"data: more\n\n")


@pytest.mark.parametrize(
    "body",
    [
        b"data: " + b"x" * 1023 + b"\n\n",  # the data buffer holds value + "\n"
        b"data:" + b"x" * 1023 + b"\n\n",
        b"data: x\n" * 512 + b"\n",
        b"event: " + b"x" * 1017 + b"\n\n",
        b"x" * 1023 + b"\n",
        b"{\n" * 512,
    ],
)
def test_just_within_the_bound_passes_however_split(body: bytes) -> None:
    results = [feed_all(SSEDecoder(max_event_size=1024), chunks) for chunks in splits(body)]
    assert results[0] == results[1] == results[2]


def test_the_unparsed_bound_frees_up_when_taken() -> None:
    decoder = SSEDecoder(max_event_size=1024)
    for _ in range(10):
        decoder.feed(b"{\n" * 500)
        assert len(decoder.take_unparsed()) == 1000
    assert decoder.close() == []


def test_the_data_bound_is_per_event() -> None:
    decoder = SSEDecoder(max_event_size=1024)
    events = decoder.feed((b"data: " + b"x" * 1000 + b"\n\n") * 10)
    assert len(events) == 10


def test_default_message_names_mib() -> None:
    with pytest.raises(SSEEventTooLarge, match="larger than 1 MiB"):
        SSEDecoder().feed(b"data: " + b"x" * (1 << 20) + b"\n")


def test_bad_bound_is_rejected() -> None:
    with pytest.raises(ValueError):
        SSEDecoder(max_event_size=0)


# ----- linear cost ------------------------------------------------------------------------


@pytest.mark.slow
def test_one_mib_event_fed_one_byte_at_a_time() -> None:
    # Linear cost is what keeps this at well under a second; a rescan of the pending line
    # on every feed would take minutes. Timing itself is not asserted.
    size = 1 << 20
    decoder = SSEDecoder(max_event_size=2 * size)
    feed = decoder.feed
    events: list[ServerSentEvent] = []
    for byte in [b"d", b"a", b"t", b"a", b":"]:
        events += feed(byte)
    one = b"x"
    for _ in range(size):
        events += feed(one)
    events += feed(b"\r")
    events += feed(b"\n")
    events += feed(b"\r\n")
    assert len(events) == 1
    assert events[0].data == "x" * size


def test_many_short_lines_in_one_big_feed() -> None:
    # One 1 MiB feed of LF-only lines: each line is found once, never by a scan from the
    # start of the feed (that would be ~10^11 byte comparisons here).
    body = b"data: x\n\n" * (1 << 17)
    assert len(SSEDecoder().feed(body)) == 1 << 17
    mixed = b"data: x\r\n\r\ndata: y\n\n" * (1 << 15)
    assert len(SSEDecoder().feed(mixed)) == 1 << 16
