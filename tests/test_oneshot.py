"""One-shot commands through the real OpenSSH client without a PTY: ``ask``,
``history``, ``export`` and ``search``; stdout and exit status byte for byte."""

from __future__ import annotations

import asyncio
import re
import subprocess
import zipfile
from pathlib import Path

import asyncssh
import pytest

from kindlessh import Server

from .fake_gemini import FakeGemini, Reply
from .helpers import epubcheck
from .ptyclient import openssh_argv

ESCAPES = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")  # any control but \n and \t


class Ssh:
    """The OpenSSH client, without a PTY, logging in to the test server."""

    def __init__(self, server: Server, key: asyncssh.SSHKey, tmp_path: Path) -> None:
        argv = openssh_argv(server, key, tmp_path)
        argv[argv.index("-t")] = "-T"
        self.argv = argv

    async def __call__(
        self, *command: str, stdin: bytes = b"", binary: bool = False
    ) -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            *self.argv, *command,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin), 20)
        assert proc.returncode is not None
        assert binary or not ESCAPES.search(out), out
        return proc.returncode, out, err


@pytest.fixture
def ssh(server: Server, client_key: asyncssh.SSHKey, tmp_path: Path) -> Ssh:
    return Ssh(server, client_key, tmp_path)


@pytest.mark.slow
async def test_ask_streams_plain_text_and_continues_the_conversation(
    ssh: Ssh, fake_gemini: FakeGemini, server: Server
) -> None:
    fake_gemini.enqueue(
        Reply.text(["Red, ", "\x1b[31mgreen\x1b[0m\r", "\nand blue."]),
        Reply.text(["Yellow."]),
        Reply.text(["Fresh."]),
    )
    status, out, err = await ssh("ask", "What are the primary colours?")
    assert (status, out, err) == (0, b"Red, ^[[31mgreen^[[0m\nand blue.\n", b"")
    # The question from standard input, the same conversation continued.
    status, out, err = await ssh("ask", stdin=b"And the secondary ones?\n")
    assert (status, out, err) == (0, b"Yellow.\n", b"")
    second = await fake_gemini.wait_requests(2)
    assert b"primary colours" in second.body
    status, out, _ = await ssh("ask", "--new", "Hello")
    assert (status, out) == (0, b"Fresh.\n")
    third = await fake_gemini.wait_requests(3)
    assert b"primary colours" not in third.body
    rows = await server.ctx.session.hub.store.list_conversations("reader")
    assert [r.turn_count for r in rows] == [1, 2]


@pytest.mark.slow
async def test_failures_are_one_line_on_stderr(
    ssh: Ssh, fake_gemini: FakeGemini, make_server: object
) -> None:
    fake_gemini.enqueue(Reply.error(400))
    status, out, err = await ssh("ask", "break please")
    assert status == 1 and out == b""
    assert err.startswith(b"kindlessh: ") and err.count(b"\n") == 1
    status, out, err = await ssh("ask")
    assert (status, out) == (2, b"")
    assert err == b'kindlessh: No question. Usage: ssh HOST ask [--new] "QUESTION" ' \
        b"(or the question on standard input)\n"
    status, out, err = await ssh("export", "999")
    assert (status, out, err) == (1, b"", b"kindlessh: No conversation 999.\n")
    status, out, err = await ssh("export", "1", "pdf")
    assert status == 2 and err.startswith(b"kindlessh: No export format 'pdf'.")
    status, out, err = await ssh("ls", "-l")
    assert status == 2
    assert out == (
        b"kindlessh: unknown command 'ls -l'. Commands: ask, history, export, search; or "
        b"connect with `ssh -t` and no command for the chat (or the command eink or "
        b"smooth).\n"
    )


@pytest.mark.slow
async def test_ask_is_held_to_the_question_burst(
    make_server: object, client_key: asyncssh.SSHKey, fake_gemini: FakeGemini, tmp_path: Path
) -> None:
    server = await make_server(quota={"prompts": 1, "refill_seconds": 3600})  # type: ignore[operator]
    ssh = Ssh(server, client_key, tmp_path)
    fake_gemini.enqueue(Reply.text(["One."]), Reply.text(["Two."]))
    assert (await ssh("ask", "first"))[:2] == (0, b"One.\n")
    status, out, err = await ssh("ask", "second")
    assert status == 1 and out == b"" and err.startswith(b"kindlessh: ")
    assert len(fake_gemini.requests) == 1


@pytest.mark.slow
async def test_history_search_and_export(
    ssh: Ssh, fake_gemini: FakeGemini, server: Server, tmp_path: Path
) -> None:
    fake_gemini.enqueue(
        Reply.text(["The **Louvre** is in Paris."]),
        Reply.text(["Mount Kilimanjaro, in Tanzania."]),
    )
    assert (await ssh("ask", "Where is the Louvre?"))[0] == 0
    assert (await ssh("ask", "--new", "Highest mountain in Africa?"))[0] == 0
    rows = await server.ctx.session.hub.store.list_conversations("reader")
    status, out, err = await ssh("history")
    assert status == 0 and err == b""
    assert out == "".join(
        f"{r.id}\t{r.updated_at:%Y-%m-%d %H:%M}\t1\t{r.title}\n" for r in rows
    ).encode()
    assert out.splitlines()[0].endswith(b"\tHighest mountain in Africa?")
    louvre = rows[1].id
    status, out, err = await ssh("search", "louv*")
    assert status == 0
    assert out.startswith(f"{louvre}\t{rows[1].created_at:%Y-%m-%d} ".encode())
    assert out.count(b"\n") == 1 and b"**Louvre**" in out
    status, out, err = await ssh("search", '"in Tanzania"')
    assert status == 0 and out.count(b"\n") == 1 and b"Mount Kilimanjaro, **in Tanzania**.\n" in out
    status, out, err = await ssh("search", "nowhere")
    assert (status, out, err) == (1, b"", b"kindlessh: nothing found for nowhere\n")

    status, out, err = await ssh("export", str(louvre))
    assert status == 0 and err == b""
    assert out.startswith(b"# Where is the Louvre?\n")
    assert b"> Where is the Louvre?\n\nThe **Louvre** is in Paris.\n" in out
    status, out, _ = await ssh("export", str(louvre), "txt")
    assert status == 0 and b"[1] Question:\n  Where is the Louvre?\n" in out
    status, out, _ = await ssh("export", str(louvre), "epub", binary=True)
    assert status == 0 and out.startswith(b"PK\x03\x04")
    path = tmp_path / "out.epub"
    path.write_bytes(out)
    with zipfile.ZipFile(path) as book:
        assert book.read("mimetype") == b"application/epub+zip"
        assert "<strong>Louvre</strong>" in book.read("EPUB/turn-0001.xhtml").decode()
    checked = subprocess.run([*epubcheck(), str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.slow
async def test_export_epub_over_asyncssh_is_a_valid_book(
    server: Server, fake_gemini: FakeGemini, client_key: asyncssh.SSHKey, tmp_path: Path
) -> None:
    fake_gemini.enqueue(
        Reply.thinking(["# Zürich\n\nA **city** on a lake; see [the site](https://zuerich.com)."])
    )
    async def run(command: str) -> asyncssh.SSHCompletedProcess:
        async with asyncssh.connect(
            "127.0.0.1", server.port, username="reader", client_keys=[client_key],
            known_hosts=None,
        ) as conn:  # one session a connection
            return await conn.run(command, encoding=None)

    result = await run("ask Zürich?")
    assert result.exit_status == 0
    assert result.stdout == (
        "# Zürich\n\nA **city** on a lake; see [the site](https://zuerich.com).\n".encode()
    )
    number = (await server.ctx.session.hub.store.list_conversations("reader"))[0].id
    result = await run(f"export {number} epub")
    assert result.exit_status == 0 and isinstance(result.stdout, bytes)
    path = tmp_path / "zurich.epub"
    path.write_bytes(result.stdout)
    with zipfile.ZipFile(path) as book:
        chapter = book.read("EPUB/turn-0001.xhtml").decode()
    assert "<h1>Zürich</h1>" in chapter and "<strong>city</strong>" in chapter
    assert '<a href="https://zuerich.com">the site</a>' in chapter
    checked = subprocess.run([*epubcheck(), str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
