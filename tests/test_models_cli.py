"""``kindlessh models`` checks every model entry; ``serve`` lists them at start."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kindlessh._cli import main

from .fake_openai import FakeOpenAI


async def test_models_checks_each_entry_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeOpenAI(models=("llama3.2:latest",)) as fake:
        config = tmp_path / "c.toml"
        config.write_text(
            f'[models.local]\nbase_url = "{fake.base_url}"\nmodel = "llama3.2"\n'
            f'[models.missing]\nbase_url = "{fake.base_url}"\nmodel = "qwen3"\n'
            '[models.down]\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "x"\n'
        )
        status = await asyncio.to_thread(main, ["models", "--config", str(config)])
    out = capsys.readouterr().out.splitlines()
    assert status == 1
    assert len(out) == 3
    assert out[0].startswith("ok   local") and "llama3.2 present" in out[0]
    assert out[1].startswith("FAIL missing") and "qwen3" in out[1]
    assert out[2].startswith("FAIL down") and "down (http://127.0.0.1:9/v1)" in out[2]
    assert fake.requests[0].path == "/v1/models"


async def test_serve_lists_the_configured_models(tmp_path: Path) -> None:
    from kindlessh import load_config, start_server
    from kindlessh._cli import describe

    config_path = tmp_path / "c.toml"
    config_path.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = 0\nhost_key = "{tmp_path}/hk"\n'
        f'authorized_keys = "{tmp_path}/ak"\n[storage]\npath = "{tmp_path}/db.sqlite3"\n'
        '[models.local]\nbase_url = "http://127.0.0.1:11434/v1"\nmodel = "llama3.2"\n'
        '[models.router]\nbase_url = "https://openrouter.ai/api/v1"\nmodel = "m"\n'
        'api_key_env = "ROUTER_KEY"\n'
    )
    server = await start_server(load_config(config_path, env={}))
    try:
        lines = describe(server)
    finally:
        await server.close()
    assert "Model local (default): llama3.2 at http://127.0.0.1:11434/v1" in lines
    assert "Model router: m at https://openrouter.ai/api/v1, ROUTER_KEY IS NOT SET" in lines
    assert not any("Gemini" in line for line in lines)
