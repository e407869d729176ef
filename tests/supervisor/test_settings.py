"""The supervisor's settings: ``workers = "auto"``, ``pin`` and the timeouts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shardmq.config import Config, load_config
from shardmq.errors import ConfigError
from tests.test_cli import assert_config_error, clean_env, serve_with_fake_broker, shardmq_cmd

CPUS = len(os.sched_getaffinity(0))


def test_defaults() -> None:
    config = Config()
    assert config.pin is False
    assert config.heartbeat_timeout == 10.0
    assert config.shutdown_timeout == 10.0


@pytest.mark.parametrize("value", ["auto", "AUTO", " auto "])
def test_workers_auto_from_env(value: str) -> None:
    config = load_config(env={"SHARDMQ_WORKERS": value})
    assert config.workers == CPUS
    assert type(config.workers) is int


def test_workers_auto_from_toml_and_flag(tmp_path: Path) -> None:
    path = tmp_path / "shardmq.toml"
    path.write_text('workers = "auto"\n')
    assert load_config(config_file=path, env={}).workers == CPUS
    assert load_config({"workers": "auto"}, env={}).workers == CPUS
    assert load_config({"workers": 2}, config_file=path, env={}).workers == 2


def test_workers_other_strings_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "shardmq.toml"
    path.write_text('workers = "many"\n')
    with pytest.raises(ConfigError, match=r"^workers: expected an integer"):
        load_config(config_file=path, env={})
    with pytest.raises(ConfigError, match=r"^workers: .*\(from SHARDMQ_WORKERS\)"):
        load_config(env={"SHARDMQ_WORKERS": "many"})


def test_config_itself_keeps_an_int() -> None:
    with pytest.raises(ConfigError, match=r"^workers: "):
        Config(workers="auto")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("heartbeat_timeout", 0),
        ("heartbeat_timeout", -1.0),
        ("heartbeat_timeout", float("inf")),
        ("shutdown_timeout", 0.0),
        ("shutdown_timeout", "10"),
        ("pin", 1),
    ],
)
def test_bad_values(name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^{name}: "):
        Config(**{name: value})  # type: ignore[arg-type]


def test_env_values() -> None:
    env = {
        "SHARDMQ_PIN": "yes",
        "SHARDMQ_HEARTBEAT_TIMEOUT": "2.5",
        "SHARDMQ_SHUTDOWN_TIMEOUT": "3",
    }
    config = load_config(env=env)
    assert config.pin is True
    assert config.heartbeat_timeout == 2.5
    assert config.shutdown_timeout == 3.0


def test_cli_workers_auto_and_pin() -> None:
    config = serve_with_fake_broker("--workers", "auto", "--pin", env=clean_env())
    assert config["workers"] == CPUS
    assert config["pin"] is True
    config = serve_with_fake_broker("--workers", "3", "--no-pin", env=clean_env(SHARDMQ_PIN="1"))
    assert config["workers"] == 3
    assert config["pin"] is False


def test_cli_workers_zero_is_a_config_error() -> None:
    assert_config_error(shardmq_cmd("serve", "--workers", "0"), "workers")


def test_cli_workers_garbage_is_a_usage_error() -> None:
    proc = shardmq_cmd("serve", "--workers", "lots")
    assert proc.returncode == 2
    assert "neither a number nor 'auto'" in proc.stderr


def test_cli_help_mentions_auto_and_pin() -> None:
    proc = shardmq_cmd("serve", "--help")
    assert "auto|N" in proc.stdout
    assert "--pin / --no-pin" in proc.stdout
