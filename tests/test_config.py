"""Configuration: defaults, the documented example, and one-line errors for bad files."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from kindlessh import ConfigError, load_config
from kindlessh._config import Config, ModelConfig
from kindlessh._keys import load_or_create_host_key
from kindlessh._retry import RetryPolicy

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"


def test_no_file_means_defaults_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, env={})
    assert config.server.port == 2222
    assert config.server.host_key == tmp_path / "keys/ssh_host_ed25519_key"
    assert config.gemini.base_url == "https://generativelanguage.googleapis.com"
    assert config.gemini.api_key == ""


def test_example_documents_every_key_with_its_default(tmp_path: Path) -> None:
    raw = tomllib.loads(EXAMPLE.read_text())
    defaults = Config()
    for section in dataclasses.fields(Config):
        if section.name in ("source", "models"):
            continue
        documented = raw.get(section.name)
        assert documented is not None, f"[{section.name}] missing from the example"
        values = getattr(defaults, section.name)
        names = {f.name for f in dataclasses.fields(values)}
        assert set(documented) == names, f"[{section.name}] keys differ"
        for name in names:
            default = getattr(values, name)
            shown = documented[name]
            assert (str(default) if isinstance(default, Path) else default) == shown, name
    # The model entry's keys (the table's name and the key read from the environment
    # are not keys); the example's base_url and model are examples: they have no default.
    entry = raw["models"]["local"]
    keys = {f.name for f in dataclasses.fields(ModelConfig)} - {"name", "api_key"}
    assert set(entry) == keys
    for name in keys - {"base_url", "model"}:
        assert getattr(ModelConfig(), name) == entry[name], name
    # And the example loads as it is.
    config = load_config(EXAMPLE, env={})
    assert config.server.port == 2222
    assert [m.name for m in config.models] == ["gemini", "local"]


def test_env_key_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[gemini]\napi_key = "from-file"\n')
    assert load_config(path, env={}).gemini.api_key == "from-file"
    assert load_config(path, env={"GEMINI_API_KEY": "from-env"}).gemini.api_key == "from-env"


def test_key_is_not_in_repr(tmp_path: Path) -> None:
    assert "sekrit" not in repr(load_config(None, env={"GEMINI_API_KEY": "sekrit"}))


def test_relative_paths_follow_the_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "c.toml"
    path.write_text('[server]\nauthorized_keys = "auth/keys"\n')
    config = load_config(path, env={})
    assert config.server.authorized_keys == tmp_path / "etc" / "auth" / "keys"
    assert config.server.host_key == tmp_path / "etc" / "keys" / "ssh_host_ed25519_key"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[server]\nprot = 22\n", "[server] prot: unknown key"),
        ("[sever]\n", "[sever]: unknown section"),
        ('[server]\nport = "22"\n', "[server] port: expected an integer, got a string"),
        ("[server]\nport = 70000\n", "[server] port: 70000 is out of range"),
        ("[gemini]\ntemperature = true\n", "[gemini] temperature: expected a number"),
        ("[gemini]\nbase_url = 'ftp://x'\n", "[gemini] base_url"),
        ("[gemini]\nmodel = 'a/b'\n", "[gemini] model"),
        ("[server\n", "not valid TOML"),
        ("server = 1\n", "[server] must be a table"),
        ("[ui]\nsmooth_interval_ms = 1.5\n", "[ui] smooth_interval_ms: expected an integer"),
        ("[server]\npenalty_exempt = '10.0.0.0/8, nonsense'\n", "[server] penalty_exempt"),
        ("[server]\nmax_startups = 70\n", "[server] max_startups (70) is above"),
        ("[server]\nmax_auth_tries = 0\n", "[server] max_auth_tries: 0 is out of range"),
    ],
)
def test_bad_config_is_one_line_naming_file_and_key(
    tmp_path: Path, text: str, words: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert words in message
    assert "\n" not in message


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


def test_host_key_is_created_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "host"
    first = load_or_create_host_key(path)
    assert first.created
    assert path.stat().st_mode & 0o777 == 0o600
    second = load_or_create_host_key(path)
    assert not second.created and second.fingerprint == first.fingerprint
    assert first.fingerprint.startswith("SHA256:")


def test_host_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "host"
    load_or_create_host_key(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"\[server\] host_key .*chmod 600"):
        load_or_create_host_key(path)


def test_unusable_host_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "host"
    path.write_text("not a key\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=r"\[server\] host_key .*not a usable private key"):
        load_or_create_host_key(path)
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match=r"\[server\] host_key"):
        load_or_create_host_key(directory)


def test_the_retry_keys_build_the_policy_with_its_own_defaults(tmp_path: Path) -> None:
    assert load_config(None, env={}).gemini.retry == RetryPolicy()
    path = tmp_path / "c.toml"
    path.write_text("[gemini]\nmax_retries = 2\nretry_budget = 5\nretry_jitter = 0\n")
    retry = load_config(path, env={}).gemini.retry
    assert retry == RetryPolicy(max_retries=2, budget=5.0, jitter=0.0)


def test_the_old_system_instruction_key_still_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "old.toml"
    path.write_text('[gemini]\nsystem_instruction = "Answer in one line."\n')
    config = load_config(path, env={})
    assert config.chat.system_prompt == "Answer in one line."
    assert "[chat] system_prompt" in caplog.text


def test_the_old_and_new_system_prompt_keys_together_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "both.toml"
    path.write_text(
        '[gemini]\nsystem_instruction = "a"\n[chat]\nsystem_prompt = "b"\n'
    )
    with pytest.raises(ConfigError, match=r"renamed \[chat\] system_prompt"):
        load_config(path, env={})


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.toml"
    path.write_text(text)
    return path


LOCAL = '[models.local]\nbase_url = "http://127.0.0.1:11434/v1"\nmodel = "llama3.2"\n'


def test_gemini_table_stays_the_entry_gemini(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[gemini]\nmodel = "gemini-2.5-pro"\n' + LOCAL), env={})
    assert [(m.name, m.provider, m.model) for m in config.models] == [
        ("gemini", "gemini", "gemini-2.5-pro"), ("local", "openai", "llama3.2")]
    assert config.default_model == "gemini"


def test_only_a_local_model_needs_no_gemini(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, LOCAL), env={})
    assert [m.name for m in config.models] == ["local"] and config.default_model == "local"
    # A Gemini key in the environment brings the gemini entry back.
    config = load_config(write(tmp_path, LOCAL), env={"GEMINI_API_KEY": "k"})
    assert [m.name for m in config.models] == ["gemini", "local"]


def test_entry_key_comes_from_the_named_variable(tmp_path: Path) -> None:
    text = LOCAL + 'api_key_env = "LOCAL_KEY"\n[chat]\ndefault_model = "local"\n'
    config = load_config(write(tmp_path, text), env={"LOCAL_KEY": "s3cret"})
    entry = config.model("local")
    assert entry is not None and entry.api_key == "s3cret" and config.default_model == "local"
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize("text,words", [
    ('[models.local]\nmodel = "x"\n', "[models.local] base_url: missing"),
    ('[models.local]\nbase_url = "http://h/v1"\n', "[models.local] model: missing"),
    (LOCAL + 'provider = "anthropic"\n', '"openai" or "gemini"'),
    (LOCAL + 'api_key = "sk-1"\n', "set api_key_env"),
    (LOCAL + "first_byte_timeout = 0\n", "[models.local] first_byte_timeout"),
    (LOCAL + 'colour = "red"\n', "[models.local] colour: unknown key"),
    (LOCAL + '[chat]\ndefault_model = "nope"\n', "'nope' is not a configured model"),
    ('[models.Big]\nbase_url = "http://h/v1"\nmodel = "m"\n', "lower-case"),
])
def test_bad_model_entries_are_named(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), env={})
    assert words in str(caught.value)
