"""Process-wide tuning is ``kindlessh serve``'s doing, never a side effect of start_server."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import asyncssh
from prompt_toolkit import renderer

from kindlessh._process import GC_THRESHOLD, tune_process

from .conftest import write_config

# In a fresh process: this one is already tuned (tests/conftest.py).
PROBE = """
import asyncio, gc, json, sys
from pathlib import Path
from prompt_toolkit import renderer
from kindlessh import load_config, start_server
from kindlessh._process import tune_process

def state():
    patched = getattr(renderer._output_screen_diff, "_skips_unchanged_rows", False)
    return [list(gc.get_threshold()), gc.get_freeze_count() > 0, patched]

async def main():
    before = state()
    server = await start_server(load_config(Path(sys.argv[1])))
    started = state()
    await server.close()
    tune_process()
    print(json.dumps({"before": before, "started": started, "tuned": state()}))

asyncio.run(main())
"""


def test_start_server_alone_leaves_the_process_as_it_was(
    tmp_path: Path, client_key: asyncssh.SSHKey, rsa_host_key: bytes
) -> None:
    (tmp_path / "host_key_rsa").write_bytes(rsa_host_key)
    (tmp_path / "host_key_rsa").chmod(0o600)
    (tmp_path / "authorized_keys").write_text(client_key.export_public_key().decode())
    config = write_config(tmp_path / "kindlessh.toml", {
        "server": {"host": "127.0.0.1", "port": 0, "host_key": str(tmp_path / "host_key"),
                   "authorized_keys": str(tmp_path / "authorized_keys")},
    })
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(config)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    states = json.loads(result.stdout)
    assert states["before"][1:] == [False, False]  # the probe starts untuned
    assert states["started"] == states["before"]
    assert states["tuned"] == [list(GC_THRESHOLD), True, True]


def test_tuning_twice_is_tuning_once() -> None:
    tune_process()  # already done by the session fixture; nothing changes
    frozen = gc.get_freeze_count()
    tune_process()
    assert gc.get_freeze_count() == frozen > 0
    assert gc.get_threshold() == GC_THRESHOLD
    assert getattr(renderer._output_screen_diff, "_skips_unchanged_rows", False)
