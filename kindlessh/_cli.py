"""Command line: ``kindlessh serve`` and ``kindlessh user add|list|remove|set``.

```
kindlessh serve [--config FILE] [--host H] [--port N] [--workers N] [-v]
kindlessh user add NAME --key FILE|- [--profile eink|smooth] [--config FILE]
kindlessh user list [--config FILE]
kindlessh user remove NAME [--config FILE]
kindlessh user set NAME --profile eink|smooth [--config FILE]
kindlessh user passwd NAME [--remove] [--config FILE]   (asks twice; or one line on stdin)
kindlessh invite NAME [--profile eink|smooth] [--ttl 15m] [--quiet] [--config FILE]
kindlessh invite --list | --revoke NAME [--config FILE]
kindlessh models [--config FILE]                         (the models the key can use)
kindlessh migrate --from FILE.sqlite3 --to postgresql://...  (copy a SQLite store there)
```

Contract: ``main(argv)`` returns the exit status. Start-up problems (bad config, unusable
host key, port in use, a conversation store that cannot be opened or written or is
damaged) print one line to stderr and return 2; a user command that cannot
be done prints one line and returns 1; no traceback. User commands change the files
under ``[server] users_dir``; a running server picks the change up at the next login.
With ``[storage] url``, ``invite`` makes, lists and revokes the invites in the database
(:mod:`._shared_accounts`), and ``user list`` and ``user remove`` include the keys
invites enrolled there; every server hears the change at once.
``serve --workers N`` (N above 1, PostgreSQL store only) runs N worker processes on one
port (:mod:`._workers`); worker 0 prints the start-up lines, the parent one more line
with the workers' pids. ``serve`` tunes the process for serving
(:func:`~kindlessh._process.tune_process`) once the server has started.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path

from . import __version__
from . import _shared_accounts as shared_accounts
from ._acceptlog import install_accept_log
from ._config import Config, ModelConfig, gemini_for, load_config
from ._errors import ConfigError, ModelNotFound, StoreError, UpstreamError, UserError
from ._gemini import list_models
from ._invites import CODE_BITS, DEFAULT_TTL, Invite, Invites, parse_ttl
from ._keys import AuthorizedKeys, HostKey
from ._openai import check_entry
from ._passwords import Passwords
from ._process import tune_process
from ._server import Server, load_host_keys, start_server
from ._store import bring_up_to_date
from ._users import PROFILES, UserInfo, Users, check_name, parse_keys
from ._workers import listening_sockets, run_workers

log = logging.getLogger("kindlessh")


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _connect_command(config: Config, port: int, user: str | None = None) -> str:
    host = config.server.host
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    if user is None:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no name for this uid (a bare container)
            user = "you"
    port_arg = "" if port == 22 else f"-p {port} "
    return f"ssh -t {port_arg}{user}@{host}"


def _minutes(left: timedelta) -> str:
    minutes = max(1, round(left.total_seconds() / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


class _SharedInviteRows:
    """``kindlessh invite`` on the database's invites (``[storage] url``)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def all(self, now: datetime) -> list[Invite]:
        return shared_accounts.run(self.url, lambda c: shared_accounts.list_invites(c, now))

    def revoke(self, name: str) -> bool:
        return shared_accounts.run(self.url, lambda c: shared_accounts.revoke_invite(c, name))

    def create(
        self, name: str, *, profile: str | None, ttl: timedelta, now: datetime
    ) -> tuple[str, Invite]:
        return shared_accounts.run(
            self.url,
            lambda c: shared_accounts.create_invite(c, name, profile=profile, ttl=ttl, now=now),
        )


def _invite_command(args: argparse.Namespace, config: Config) -> int:
    url = config.storage.url
    invites = _SharedInviteRows(url) if url else Invites.beside(config.server.users_dir)
    now = datetime.now(UTC)
    if args.list:
        pending = invites.all(now)
        for invite in pending:
            profile = f", profile {invite.profile}" if invite.profile else ""
            _out(f"{invite.name}: expires in {_minutes(invite.left(now))}{profile}")
        if not pending:
            _out("No invites are pending.")
        return 0
    if args.revoke:
        check_name(args.revoke)
        if not invites.revoke(args.revoke):
            raise UserError(f"no invite is pending for {args.revoke}")
        _out(f"{args.revoke}: invite revoked")
        return 0
    if not args.name:
        raise UserError("give a name (kindlessh invite NAME), or --list or --revoke NAME")
    name = check_name(args.name)
    code, invite = invites.create(
        name, profile=args.profile, ttl=parse_ttl(args.ttl) if args.ttl else DEFAULT_TTL,
        now=now,
    )
    if args.quiet:
        _out(code)
        return 0
    profile = f" with the {args.profile} screen" if args.profile else ""
    _out(f"Invite for {name}{profile}: valid for {_minutes(invite.left(now))}, once.")
    _out(f"Code: {code}")
    _out("On the Kindle (or any device), connect and type the code when asked:")
    _out(f"  {_connect_command(config, config.server.port, name)}")
    _out("The key the device offers is then registered for "
         f"{name}; next time it logs in by itself.")
    _out(f"({CODE_BITS:.0f}-bit code; kindlessh invite --revoke {name} cancels it.)")
    return 0


def describe(server: Server) -> list[str]:
    """The start-up lines: where to connect, the host keys, keys and API key status."""
    config = server.ctx.config
    lines = [f"kindlessh {__version__} listening on {config.server.host}:{server.port}"]
    for key in server.host_keys:
        made = " (created now)" if key.created else ""
        lines += [f"Host key {key.path}{made}:", f"  {key.label} {key.fingerprint}"]
    lines.append(f"Connect:  {_connect_command(config, server.port)}")
    auth = server.ctx.keys.authorized
    count = auth.count()
    users = server.ctx.keys.users.names()
    if users:
        shown = ", ".join(users[:5]) + (", ..." if len(users) > 5 else "")
        lines.append(f"Users: {len(users)} in {server.ctx.keys.users.root} ({shown})")
    enrolled = server.ctx.keys.enrolled
    by_invite = enrolled.names() if enrolled is not None else []
    if by_invite:
        lines.append(f"Users with keys registered by invite, in the database: {len(by_invite)}")
    if count:
        lines.append(f"Authorized keys: {count} in {auth.path}")
    elif not users and not by_invite:
        lines += [
            "No keys are authorized yet, so nobody can log in. "
            f"Add your public key to {auth.path}:",
            f"  cat ~/.ssh/id_ed25519.pub >> {auth.path}",
            "  (make one with: ssh-keygen -t ed25519; no restart needed)",
        ]
    if auth.error:
        lines.append(f"Warning: cannot parse {auth.error}")
    gemini = config.gemini
    for entry in config.models:
        default = " (default)" if entry.name == config.default_model and \
            len(config.models) > 1 else ""
        if entry.provider == "gemini" and entry.name == "gemini" and len(config.models) == 1:
            if gemini.api_key:
                lines.append(f"Gemini: model {gemini.model}, API key set")
            else:
                lines.append(
                    f"Gemini: model {gemini.model}, NO API KEY: chats will say so. "
                    "Set GEMINI_API_KEY=... (or [gemini] api_key) and restart."
                )
        elif entry.provider == "gemini":
            keyword = "API key set" if entry.api_key else "NO API KEY"
            lines.append(f"Model {entry.name}{default}: Gemini {entry.model}, {keyword}")
        else:
            keyword = f", key from {entry.api_key_env}" if entry.api_key_env else ""
            if entry.api_key_env and not entry.api_key:
                keyword = f", {entry.api_key_env} IS NOT SET"
            lines.append(
                f"Model {entry.name}{default}: {entry.model} at {entry.base_url}{keyword}"
            )
    return lines


async def _serve(
    config: Config,
    *,
    sock: socket.socket | None = None,
    host_keys: tuple[HostKey, HostKey | None] | None = None,
    announce: bool = True,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    install_accept_log(loop)  # out of file descriptors: one line a minute, not a flood
    server = await start_server(config, sock=sock, host_keys=host_keys)
    tune_process()  # after start-up, so what it made is frozen too
    if announce:
        for line in describe(server):
            _out(line)
    await stop.wait()
    _out("kindlessh: shutting down")
    await server.close()
    return 0


def _serve_workers(config: Config, count: int) -> int:
    """``serve --workers N`` with N above 1: the pre-fork parent (:mod:`._workers`)."""
    if not config.storage.url:
        raise ConfigError(
            f"--workers {count}: several workers need the PostgreSQL store "
            "([storage] url); the SQLite file serves one process"
        )
    # Once, before any worker: every worker offers the same host keys, and none
    # migrates the schema while another is using it.
    host_keys = load_host_keys(config)
    asyncio.run(bring_up_to_date(config.storage))
    socks = listening_sockets(config.server.host, config.server.port, count)

    def child(slot: int, sock: socket.socket, first: bool) -> int:
        return asyncio.run(_serve(config, sock=sock, host_keys=host_keys, announce=first))

    def started(pids: list[int]) -> None:
        _out(f"Workers: {count} processes on port {socks[0].getsockname()[1]}, pids "
             + ", ".join(map(str, pids)))

    return run_workers(socks, child, started)


def _read_key_text(source: str) -> tuple[str, str]:
    """The text of ``--key``: a file, or standard input for ``-``."""
    if source == "-":
        return sys.stdin.read(), "standard input"
    try:
        return Path(source).read_text(encoding="utf-8"), source
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UserError(f"--key {source}: cannot read it ({reason})") from None


def _passwd(args: argparse.Namespace, config: Config) -> None:
    passwords = Passwords(config.server.users_dir)
    if args.remove:
        if not passwords.remove(args.name):
            raise UserError(f"{args.name} has no password")
        _out(f"{args.name}: password removed")
        return
    if sys.stdin.isatty():
        password = getpass.getpass(f"New password for {args.name}: ")
        if getpass.getpass("Again: ") != password:
            raise UserError("the two passwords differ; nothing was changed")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    passwords.set(args.name, password)
    _out(f"{args.name}: password set (stored as a scrypt hash)")
    if not config.server.password_auth:
        _out("Note: [server] password_auth is off, so the server does not ask for it yet.")


def _user_command(args: argparse.Namespace, config: Config) -> int:
    users = Users(config.server.users_dir)
    if args.action != "list":
        check_name(args.name)  # before reading a key, so a bad name is the one complaint
    if args.action == "add":
        text, where = _read_key_text(args.key)
        entries = parse_keys(text, where)
        added = users.add(args.name, entries, args.profile)
        for entry in added:
            _out(f"{args.name}: added {entry.fingerprint} {entry.comment}".rstrip())
        if len(added) < len(entries):
            _out(f"{args.name}: {len(entries) - len(added)} key(s) already there, skipped")
        _out(f"{args.name} can log in now as: ssh -t {args.name}@<this server> "
             "(no restart needed)")
    elif args.action == "list":
        url = config.storage.url
        enrolled = shared_accounts.run(url, shared_accounts.enrolled) if url else {}
        names = users.names()
        for name in sorted({*names, *enrolled}):
            info = users.info(name) if name in names else UserInfo(name, [], 0)
            by_invite = enrolled.get(name, [])
            others = f", {info.other_lines} line(s) not understood" if info.other_lines else ""
            profile = UserInfo(name, [*info.keys, *by_invite], 0).profile
            _out(f"{name}: {len(info.keys) + len(by_invite)} key(s), profile {profile}{others}")
            for entry in info.keys:
                _out(f"  {entry.fingerprint} {entry.comment}".rstrip())
            for entry in by_invite:
                shown = f"{entry.fingerprint} {entry.comment}".rstrip()
                _out(f"  {shown} (enrolled by invite, in the database)")
        if not names and not enrolled:
            _out(f"No users in {users.root}.")
        shared = AuthorizedKeys(config.server.authorized_keys).count()
        _out(f"{shared} key(s) in {config.server.authorized_keys} may log in as any "
             "other name.")
    elif args.action == "remove":
        url, name = config.storage.url, args.name
        dropped = (
            shared_accounts.run(url, lambda c: shared_accounts.remove_keys(c, name)) if url else 0
        )
        if dropped and not users.path(name).exists():
            removed = dropped  # a user made by an invite alone
        else:
            removed = len(users.remove(name).keys) + dropped
        Passwords(config.server.users_dir).remove(name)
        _out(f"{name}: removed, with {removed} key(s)")
    elif args.action == "passwd":
        _passwd(args, config)
    else:
        url = config.storage.url
        in_db = (
            shared_accounts.run(
                url, lambda c: shared_accounts.set_profile(c, args.name, args.profile)
            )
            if url else 0
        )
        if in_db and not users.path(args.name).exists():
            count = in_db  # a user made by an invite alone
        else:
            count = users.set_profile(args.name, args.profile) + in_db
        _out(f"{args.name}: profile {args.profile} on {count} key(s)")
    return 0


def _parser() -> argparse.ArgumentParser:
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
    serve.add_argument(
        "--workers", type=int, default=1, metavar="N",
        help="worker processes sharing the port (default 1; above 1 needs [storage] url)",
    )

    user = sub.add_parser("user", help="add, list or remove users and their keys")
    actions = user.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="give a user a public key (creates the user)")
    add.add_argument("name", help="user name: the SSH login name")
    add.add_argument("--key", required=True, metavar="FILE",
                     help="public key file (OpenSSH format, options allowed), - for stdin")
    add.add_argument("--profile", choices=PROFILES, help="screen profile for these keys")
    actions.add_parser("list", help="users, their keys and profiles")
    remove = actions.add_parser("remove", help="delete a user and their keys")
    remove.add_argument("name")
    passwd = actions.add_parser(
        "passwd", help="set a password (for clients without keys; see password_auth)"
    )
    passwd.add_argument("name")
    passwd.add_argument("--remove", action="store_true", help="take the password away")
    setp = actions.add_parser("set", help="change a user's screen profile")
    setp.add_argument("name")
    setp.add_argument("--profile", choices=PROFILES, required=True)
    for p in (add, remove, setp, passwd, actions.choices["list"]):
        p.add_argument("--config", type=Path, help="TOML config file (default: none)")

    invite = sub.add_parser(
        "invite", help="a one-time code that lets a new device register its key"
    )
    invite.add_argument("name", nargs="?", help="the user the device logs in as")
    invite.add_argument("--profile", choices=PROFILES, help="screen profile for its key")
    invite.add_argument("--ttl", help="how long the code works (default 15m; 2h, 1d...)")
    invite.add_argument("--quiet", action="store_true", help="print only the code")
    invite.add_argument("--list", action="store_true", help="the pending invites")
    invite.add_argument("--revoke", metavar="NAME", help="cancel NAME's invite")
    invite.add_argument("--config", type=Path, help="TOML config file (default: none)")

    models = sub.add_parser(
        "models",
        help="the Gemini models the API key can use; with [models.NAME] entries, "
        "check each one",
    )
    models.add_argument("--config", type=Path, help="TOML config file (default: none)")

    copy = sub.add_parser(
        "migrate", help="copy a SQLite store's conversations into an empty PostgreSQL database"
    )
    copy.add_argument("--from", dest="source", type=Path, required=True, metavar="FILE",
                      help="the SQLite store ([storage] path)")
    copy.add_argument("--to", dest="target", required=True, metavar="URL",
                      help="the PostgreSQL database (postgresql://user:password@host/db)")
    return parser


def _migrate_command(args: argparse.Namespace) -> int:
    """``kindlessh migrate``: one line and 2 for a bad URL, 1 for a copy not made."""
    from ._storecopy import copy_store

    if not str(args.target).startswith(("postgresql://", "postgres://")):
        sys.stderr.write("kindlessh: --to: expected a postgresql:// URL\n")
        return 2
    try:
        asyncio.run(copy_store(args.source, args.target, _out))
    except StoreError as exc:
        sys.stderr.write(f"kindlessh: {exc}\n")
        return 1
    return 0


async def _check(entry: ModelConfig, config: Config) -> str:
    """One entry checked: reachable, key accepted, model present."""
    if entry.provider == "openai":
        return await check_entry(entry)
    found = await list_models(gemini_for(entry, config.gemini))
    if any(m.name == entry.model for m in found):
        return f"model {entry.model} present"
    raise ModelNotFound(f"Gemini does not offer {entry.model} to this key")


def _check_entries(config: Config) -> int:
    """Check every model entry; one line each; 1 when any fails."""

    async def run() -> list[tuple[ModelConfig, str, bool]]:
        results = []
        for entry in config.models:
            try:
                results.append((entry, await _check(entry, config), True))
            except UpstreamError as exc:
                results.append((entry, str(exc), False))
        return results

    results = asyncio.run(run())
    width = max(len(e.name) for e, _, _ in results)
    for entry, said, ok in results:
        _out(f"{'ok  ' if ok else 'FAIL'} {entry.name:<{width}}  {entry.provider}: {said}")
    return 0 if all(ok for _, _, ok in results) else 1


def _models_command(config: Config) -> int:
    """Print the models the key can use, one a line; the configured one is marked.
    With model entries besides Gemini, check every entry instead."""
    if any(m.provider != "gemini" or m.name != "gemini" for m in config.models):
        return _check_entries(config)
    try:
        found = asyncio.run(list_models(config.gemini))
    except UpstreamError as exc:
        sys.stderr.write(f"kindlessh: {exc}\n")
        return 1
    current = config.gemini.model.removeprefix("models/")
    _out(f"Models this key can use for chat ({len(found)}); set one as [gemini] model:")
    width = max((len(m.name) for m in found), default=0)
    for m in found:
        mark = "*" if m.name == current else " "
        extra = ", thinks" if m.thinking else ""
        _out(f"{mark} {m.name:<{width}}  {m.display_name} "
             f"(in {m.input_tokens:,}, out {m.output_tokens:,} tokens{extra})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "migrate":
        return _migrate_command(args)
    if args.command == "models":
        try:
            return _models_command(load_config(args.config))
        except ConfigError as exc:
            sys.stderr.write(f"kindlessh: {exc}\n")
            return 2
    if args.command in ("user", "invite"):
        command = _user_command if args.command == "user" else _invite_command
        try:
            return command(args, load_config(args.config))
        except ConfigError as exc:
            sys.stderr.write(f"kindlessh: {exc}\n")
            return 2
        except UserError as exc:
            sys.stderr.write(f"kindlessh: {exc}\n")
            return 1

    # With several workers each line says which process wrote it.
    pid = "[%(process)d] " if args.workers > 1 else ""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s %(levelname)s {pid}%(name)s: %(message)s",
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
        if args.workers < 1:
            raise ConfigError(f"--workers {args.workers}: expected 1 or more")
        if args.workers > 1:
            return _serve_workers(config, args.workers)
        return asyncio.run(_serve(config))
    except (ConfigError, StoreError) as exc:
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
