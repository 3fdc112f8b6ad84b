"""Benchmark kindlessh's SSE decoder against httpx-sse's decoder.

Run from the repository root::

    python bench/sse.py            # full run (about 10 MB; under a minute on 2 cores)
    python bench/sse.py --quick    # smaller inputs, for a smoke test

Both decoders see the same bytes in the same chunks, in the same run:

- ``kindlessh``: ``kindlessh._sse.SSEDecoder`` fed the raw byte chunks, then ``close()``.
- ``httpx-sse``: each byte chunk goes through an incremental UTF-8 decoder
  (``errors="replace"``, as httpx does), the text through
  ``httpx_sse._decoders.SSELineDecoder`` and every line through
  ``httpx_sse._decoders.SSEDecoder``; at the end the text decoder and the line decoder are
  flushed.

Inputs are built from the complete Gemini fixture streams in ``tests/fixtures/gemini``
(every ``*.sse`` except the truncated one and the one with a raw JSON tail), concatenated
and repeated, then cut at the last event boundary at or below the target size:

- about 10 MB fed in chunks of 1-4096 bytes (random sizes, fixed seed);
- 1 MiB fed one byte at a time;
- linearity: the one-byte feed at 256 KiB, 512 KiB and 1 MiB, reported in ns per byte
  (a flat figure means time grows linearly with the input).

``--quick`` uses 1 MB and 32/64/128 KiB instead.

The chunks are cut before the clock starts. Each figure is the best of ``--repeats`` runs
(``time.perf_counter``), with the garbage collector off during a run. The script exits
with an error if the two decoders do not give the same events (count and data) on any
input.
"""

from __future__ import annotations

import argparse
import codecs
import gc
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from httpx_sse import ServerSentEvent as HttpxServerSentEvent
from httpx_sse._decoders import SSEDecoder as HttpxSSEDecoder
from httpx_sse._decoders import SSELineDecoder

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "gemini"
# Fixtures that are not a complete SSE stream: one ends mid-event, one has a raw JSON tail.
EXCLUDED = frozenset({"09_midstream_error_503.sse", "14_truncated_no_terminator.sse"})
EVENT_END = b"\r\n\r\n"

try:
    from kindlessh._sse import ServerSentEvent, SSEDecoder
except ImportError:  # not installed: use the source tree this script lives in
    sys.path.insert(0, str(REPO_ROOT))
    from kindlessh._sse import ServerSentEvent, SSEDecoder

Decode = Callable[[Sequence[bytes]], list[str]]


def decode_kindlessh(chunks: Sequence[bytes]) -> list[str]:
    """Decode with kindlessh; return the data of every event."""
    decoder = SSEDecoder()
    feed = decoder.feed
    events: list[ServerSentEvent] = []
    extend = events.extend
    for chunk in chunks:
        extend(feed(chunk))
    extend(decoder.close())
    return [event.data for event in events]


def decode_httpx_sse(chunks: Sequence[bytes]) -> list[str]:
    """Decode with httpx-sse (bytes -> text -> lines -> events); return every event's data."""
    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    line_decoder = SSELineDecoder()
    decoder = HttpxSSEDecoder()
    to_text = text_decoder.decode
    to_lines = line_decoder.decode
    to_event = decoder.decode
    events: list[HttpxServerSentEvent] = []
    append = events.append
    for chunk in chunks:
        text = to_text(chunk)
        if text:
            for line in to_lines(text):
                event = to_event(line)
                if event is not None:
                    append(event)
    tail = to_text(b"", True)
    lines = to_lines(tail) if tail else []
    for line in lines + line_decoder.flush():
        event = to_event(line)
        if event is not None:
            append(event)
    return [event.data for event in events]


DECODERS: dict[str, Decode] = {"kindlessh": decode_kindlessh, "httpx-sse": decode_httpx_sse}


@dataclass(frozen=True)
class Result:
    """The best time of one decoder on one input."""

    input: str
    decoder: str
    size: int
    seconds: float
    events: int

    @property
    def mb_per_s(self) -> float:
        return self.size / self.seconds / 1e6

    @property
    def ns_per_byte(self) -> float:
        return self.seconds / self.size * 1e9


def load_corpus() -> bytes:
    """The complete fixture streams, concatenated in name order."""
    files = sorted(p for p in FIXTURES.glob("*.sse") if p.name not in EXCLUDED)
    if not files:
        sys.exit(f"no fixtures found in {FIXTURES}")
    corpus = b"".join(p.read_bytes() for p in files)
    if not corpus.endswith(EVENT_END):
        sys.exit("fixture corpus does not end at an event boundary")
    return corpus


def body_of_size(corpus: bytes, target: int) -> bytes:
    """Repeat ``corpus`` and cut it at the last event boundary at or below ``target``."""
    repeated = corpus * (target // len(corpus) + 1)
    end = repeated.rfind(EVENT_END, 0, target - len(EVENT_END) + 1)
    if end < 0:
        sys.exit(f"target size {target} is smaller than one event")
    return repeated[: end + len(EVENT_END)]


def random_chunks(body: bytes, seed: int, largest: int = 4096) -> list[bytes]:
    rng = random.Random(seed)
    chunks: list[bytes] = []
    pos = 0
    while pos < len(body):
        step = rng.randint(1, largest)
        chunks.append(body[pos : pos + step])
        pos += step
    return chunks


def byte_chunks(body: bytes) -> list[bytes]:
    return [body[i : i + 1] for i in range(len(body))]


@dataclass(frozen=True)
class Input:
    """A body and the chunks it is fed in, cut before timing."""

    name: str
    body: bytes
    chunks: Sequence[bytes]


def time_once(decode: Decode, chunks: Sequence[bytes]) -> tuple[float, list[str]]:
    """Wall time of one run (garbage collector off), and the events' data."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        events = decode(chunks)
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    return elapsed, events


def run_all(inputs: Sequence[Input], repeats: int) -> list[Result]:
    """Time every decoder on every input; exit if two decoders' events differ.

    Strategy: the repeats go round all inputs and decoders in turn, rather than running
    one pair ``repeats`` times in a row, so that a slow spell of the machine (common on
    shared virtual machines) does not land on a single figure; the best run is kept.
    """
    best: dict[tuple[str, str], float] = {}
    counts: dict[tuple[str, str], int] = {}
    for round_ in range(repeats):
        for item in inputs:
            outputs: dict[str, list[str]] = {}
            for decoder, decode in DECODERS.items():
                elapsed, events = time_once(decode, item.chunks)
                key = (item.name, decoder)
                best[key] = min(best.get(key, elapsed), elapsed)
                counts[key] = len(events)
                if round_ == 0:
                    outputs[decoder] = events
                del events
            if round_ == 0:
                check_same(item.name, outputs)
    return [
        Result(
            item.name, decoder, len(item.body), best[item.name, decoder], counts[item.name, decoder]
        )
        for item in inputs
        for decoder in DECODERS
    ]


def check_same(name: str, outputs: dict[str, list[str]]) -> None:
    """Exit with an error unless every decoder gave the same, non-empty event data."""
    reference_name, reference = next(iter(outputs.items()))
    if not reference:
        sys.exit(f"input {name!r}: {reference_name} produced no events")
    for decoder, events in outputs.items():
        if len(events) != len(reference):
            sys.exit(
                f"MISMATCH on input {name!r}: {reference_name} gave {len(reference)} events, "
                f"{decoder} gave {len(events)}"
            )
        for index, (expected, got) in enumerate(zip(reference, events, strict=True)):
            if expected != got:
                sys.exit(
                    f"MISMATCH on input {name!r}: event {index} differs between "
                    f"{reference_name} ({expected[:60]!r}...) and {decoder} ({got[:60]!r}...)"
                )


def size_label(size: int) -> str:
    if size >= 1 << 20:
        return f"{size / (1 << 20):.2f} MiB"
    return f"{size / (1 << 10):.0f} KiB"


def print_table(results: Sequence[Result]) -> None:
    header = (
        f"{'input':<26} {'decoder':<10} {'bytes':>9} {'seconds':>8} {'MB/s':>7} "
        f"{'ns/byte':>7} {'events':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.input:<26} {r.decoder:<10} {r.size:>9} {r.seconds:>8.4f} {r.mb_per_s:>7.2f} "
            f"{r.ns_per_byte:>7.1f} {r.events:>6}"
        )


def print_ratios(results: Sequence[Result]) -> None:
    print("\nhttpx-sse time / kindlessh time (above 1: kindlessh is faster)")
    by_input: dict[str, dict[str, Result]] = {}
    for r in results:
        by_input.setdefault(r.input, {})[r.decoder] = r
    for name, pair in by_input.items():
        ratio = pair["httpx-sse"].seconds / pair["kindlessh"].seconds
        print(f"  {name:<26} {ratio:6.2f}x")


def print_linearity(results: Sequence[Result]) -> None:
    print("\nlinearity, one byte per feed: ns/byte at each size (flat means linear)")
    for decoder in DECODERS:
        rows = sorted((r for r in results if r.decoder == decoder), key=lambda r: r.size)
        figures = "  ".join(f"{size_label(r.size)}: {r.ns_per_byte:.1f}" for r in rows)
        growth = rows[-1].ns_per_byte / rows[0].ns_per_byte
        print(f"  {decoder:<10} {figures}  (largest input / smallest: {growth:.2f})")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs (about 1 MB)")
    parser.add_argument(
        "-n", "--repeats", type=int, default=5, help="runs per figure, best taken (default 5)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the chunk sizes")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    kib = 1 << 10
    if args.quick:
        random_target = 1_000_000
        linear_sizes = [32 * kib, 64 * kib, 128 * kib]
    else:
        random_target = 10_000_000
        linear_sizes = [256 * kib, 512 * kib, 1024 * kib]

    corpus = load_corpus()
    print(
        f"Python {platform.python_version()} on {platform.machine()}, "
        f"{len(corpus)}-byte fixture corpus, best of {args.repeats}"
        f"{', quick' if args.quick else ''}\n"
    )
    started = time.perf_counter()

    body = body_of_size(corpus, random_target)
    random_input = Input(
        f"{len(body) / 1e6:.1f} MB, 1-4096 B chunks", body, random_chunks(body, args.seed)
    )
    byte_inputs: list[Input] = []
    for size in linear_sizes:
        body = body_of_size(corpus, size)
        byte_inputs.append(Input(f"{size_label(size)}, 1 B chunks", body, byte_chunks(body)))
    all_results = run_all([random_input, *byte_inputs], args.repeats)

    # The largest one-byte input is also a main input of its own.
    main_names = {random_input.name, byte_inputs[-1].name}
    results = [r for r in all_results if r.input in main_names]
    linear = [r for r in all_results if r.input != random_input.name]

    print_table(results)
    print_ratios(results)
    print()
    print_table(linear)
    print_linearity(linear)
    total = time.perf_counter() - started
    print(f"\nall inputs: both decoders gave the same events; total {total:.1f} s")


if __name__ == "__main__":
    main()
