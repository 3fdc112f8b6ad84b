"""Command line: ``kindlessh serve [--config FILE] [--host H] [--port N]``.

Contract: ``main(argv)`` returns the exit status. Start-up problems (bad config, unusable
host key, port in use) print one line to stderr and return 2; no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import getpass
import logging
import signal
import socket
import sys
from pathlib import Path

from . import __version__
from ._config import Config, load_config
from ._errors import ConfigError
from ._server import Server, start_server

log = logging.getLogger("kindlessh")


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _connect_command(config: Config, port: int) -> str:
    host = config.server.host
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    user = getpass.getuser()
    port_arg = "" if port == 22 else f"-p {port} "
    return f"ssh -t {port_arg}{user}@{host}"


def describe(server: Server) -> list[str]:
    """The start-up lines: where to connect, the host keys, keys and API key status."""
    config = server.ctx.config
    lines = [f"kindlessh {__version__} listening on {config.server.host}:{server.port}"]
    for key in server.host_keys:
        made = " (created now)" if key.created else ""
        lines += [f"Host key {key.path}{made}:", f"  {key.label} {key.fingerprint}"]
    lines.append(f"Connect:  {_connect_command(config, server.port)}")
    auth = server.ctx.authorized
    count = auth.count()
    if count:
        lines.append(f"Authorized keys: {count} in {auth.path}")
    else:
        lines += [
            "No keys are authorized yet, so nobody can log in. "
            f"Add your public key to {auth.path}:",
            f"  cat ~/.ssh/id_ed25519.pub >> {auth.path}",
            "  (make one with: ssh-keygen -t ed25519; no restart needed)",
        ]
    if auth.error:
        lines.append(f"Warning: cannot parse {auth.error}")
    gemini = config.gemini
    if gemini.api_key:
        lines.append(f"Gemini: model {gemini.model}, API key set")
    else:
        lines.append(
            f"Gemini: model {gemini.model}, NO API KEY: chats will say so. "
            "Set GEMINI_API_KEY=... (or [gemini] api_key) and restart."
        )
    return lines


async def _serve(config: Config) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    server = await start_server(config)
    for line in describe(server):
        _out(line)
    await stop.wait()
    _out("kindlessh: shutting down")
    await server.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="kindlessh", description="An SSH server that chats with Google Gemini."
    )
    parser.add_argument("--version", action="version", version=f"kindlessh {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the SSH server")
    serve.add_argument("--config", type=Path, help="TOML config file (default: none)")
    serve.add_argument("--host", help="address to listen on (overrides [server] host)")
    serve.add_argument("--port", type=int, help="port to listen on (overrides [server] port)")
    serve.add_argument("-v", "--verbose", action="store_true", help="log more")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        config = load_config(args.config)
        server_cfg = config.server
        if args.host is not None:
            server_cfg = dataclasses.replace(server_cfg, host=args.host)
        if args.port is not None:
            if not 0 <= args.port <= 65535:
                raise ConfigError(f"--port {args.port}: expected a port number from 0 to 65535")
            server_cfg = dataclasses.replace(server_cfg, port=args.port)
        config = dataclasses.replace(config, server=server_cfg)
        return asyncio.run(_serve(config))
    except ConfigError as exc:
        sys.stderr.write(f"kindlessh: {exc}\n")
        return 2
    except OSError as exc:
        where = f"{config.server.host}:{config.server.port}"
        if exc.errno == errno.EADDRINUSE:
            why = "the port is in use by another program; choose another with --port"
        else:
            why = exc.strerror or str(exc)
        sys.stderr.write(f"kindlessh: cannot listen on {where}: {why}\n")
        return 2
    except KeyboardInterrupt:
        return 130
