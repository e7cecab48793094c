"""Settings precedence (flags > env > file > defaults) and secrets that never leak."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionpipe.settings import SETTINGS_FILE_ENV, load_settings


def test_defaults_are_the_embedded_broker() -> None:
    s = load_settings()
    assert s.broker.url == "memory://"
    assert s.streams.name("frames") == "vp.frames"


def test_env_overrides_file_and_flags_override_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "vp.toml"
    f.write_text('[broker]\nurl = "redis://file:6379/0"\n[executor]\nslo_ms = 50\nmax_batch = 4\n')
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(f))
    assert load_settings().broker.url == "redis://file:6379/0"
    monkeypatch.setenv("VISIONPIPE_BROKER__URL", "redis://env:6379/0")
    monkeypatch.setenv("VISIONPIPE_EXECUTOR__MAX_BATCH", "16")
    s = load_settings()
    assert s.broker.url == "redis://env:6379/0"
    assert s.executor.max_batch == 16 and s.executor.slo_ms == 50  # env and file merge per field
    s = load_settings(broker={"url": "kafka://flag:9092"}, executor={"max_batch": None})
    assert s.broker.url == "kafka://flag:9092"
    assert s.executor.max_batch == 16  # an unset flag (None) leaves the environment's value


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_yaml_and_json_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    f = tmp_path / f"vp{suffix}"
    f.write_text('{"streams": {"prefix": "cam"}}')  # JSON is valid YAML too
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(f))
    assert load_settings().streams.name("results") == "cam.results"


def test_missing_or_unknown_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(tmp_path / "absent.toml"))
    with pytest.raises(FileNotFoundError):
        load_settings()
    bad = tmp_path / "vp.ini"
    bad.write_text("")
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(bad))
    with pytest.raises(ValueError, match="toml"):
        load_settings()


def test_password_is_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONPIPE_BROKER__PASSWORD", "hunter2")
    s = load_settings()
    assert "hunter2" not in repr(s) and "hunter2" not in s.model_dump_json()
    assert s.broker_password() == "hunter2"
    monkeypatch.delenv("VISIONPIPE_BROKER__PASSWORD")
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    monkeypatch.setenv("VISIONPIPE_BROKER__PASSWORD_FILE", str(secret))
    assert load_settings().broker_password() == "from-file"
