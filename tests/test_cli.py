"""The ``shardmq`` command, run as a real subprocess (``python -m shardmq``).

No real broker is started here: error paths fail before ``broker.serve`` is
imported, and the precedence tests swap in a stand-in ``shardmq.broker`` that
prints the config it was given.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import shardmq

ROOT = Path(__file__).resolve().parent.parent

# Runs the real CLI with a stand-in broker whose serve() prints the config
# and the root logger's level as JSON.
FAKE_BROKER = """
import dataclasses, json, logging, sys, types
broker = types.ModuleType("shardmq.broker")
def serve(config):
    result = dataclasses.asdict(config)
    result["root_log_level"] = logging.getLogger().level
    print(json.dumps(result))
broker.serve = serve
sys.modules["shardmq.broker"] = broker
from shardmq.cli import main
main(prog_name="shardmq")
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SHARDMQ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def shardmq_cmd(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardmq", *args],
        env=clean_env() if env is None else env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def serve_with_fake_broker(*args: str, env: dict[str, str]) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", FAKE_BROKER, "serve", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def assert_config_error(proc: subprocess.CompletedProcess[str], setting: str) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"shardmq: error: {setting}: "), lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    return lines[0]


def test_version() -> None:
    proc = shardmq_cmd("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"shardmq {shardmq.__version__}\n"


def test_serve_help_lists_flags_and_env_vars() -> None:
    proc = shardmq_cmd("serve", "--help")
    assert proc.returncode == 0, proc.stderr
    for flag in (
        "--host",
        "--port",
        "--config",
        "--app",
        "--workers",
        "--log-level",
        "--max-connections",
        "--max-packet-size",
        "--sys-interval",
        "--connect-timeout",
        "--max-queued-messages",
        "--cluster",
        "--node-id",
        "--node-timeout",
    ):
        assert flag in proc.stdout
    assert "SHARDMQ_PORT" in proc.stdout


def test_cluster_without_redis_is_one_line() -> None:
    assert_config_error(shardmq_cmd("serve", "--cluster"), "cluster")
    line = assert_config_error(shardmq_cmd("serve", "--cluster", "--store", "redis"), "redis_url")
    assert "--cluster" in line


def test_cluster_flags_reach_serve() -> None:
    got = serve_with_fake_broker(
        "--cluster",
        "--store",
        "redis",
        "--redis-url",
        "redis://10.1.2.3:6379/0",
        "--node-id",
        "eu-1",
        "--node-timeout",
        "3",
        env=clean_env(),
    )
    assert (got["cluster"], got["node_id"], got["node_timeout"]) == (True, "eu-1", 3.0)


def test_port_out_of_range_flag() -> None:
    line = assert_config_error(shardmq_cmd("serve", "--port", "70000"), "port")
    assert "70000" in line and "--port" in line


def test_bad_env_var() -> None:
    proc = shardmq_cmd("serve", env=clean_env(SHARDMQ_MAX_CONNECTIONS="abc"))
    line = assert_config_error(proc, "max_connections")
    assert "SHARDMQ_MAX_CONNECTIONS" in line


def test_unknown_toml_key(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text("port = 1884\nmax_conections = 5\n")
    line = assert_config_error(shardmq_cmd("serve", "--config", str(path)), "max_conections")
    assert str(path) in line


def test_unknown_toml_key_via_shardmq_config(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text("bogus = 1\n")
    assert_config_error(shardmq_cmd("serve", env=clean_env(SHARDMQ_CONFIG=str(path))), "bogus")


def test_bad_toml_syntax(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text("port = = 1\n")
    line = assert_config_error(shardmq_cmd("serve", "--config", str(path)), "config")
    assert str(path) in line


def test_works_from_any_directory(tmp_path: Path) -> None:
    proc = shardmq_cmd("serve", "--workers", "0", cwd=tmp_path)
    assert_config_error(proc, "workers")


# -- precedence through the real command line, with a stand-in broker ---------------


def test_defaults_reach_serve() -> None:
    config = serve_with_fake_broker(env=clean_env())
    assert config["port"] == 1883
    assert config["log_level"] == "info"
    assert config["root_log_level"] == 20  # logging.INFO


def test_unpassed_flags_do_not_hide_env_or_file(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text("port = 1884\nworkers = 2\nsys_interval = 1\nallow_anonymous = false\n")
    env = clean_env(SHARDMQ_CONFIG=str(path), SHARDMQ_WORKERS="3", SHARDMQ_LOG_LEVEL="debug")
    config = serve_with_fake_broker("--max-connections", "5", env=env)
    assert config["port"] == 1884  # file
    assert config["workers"] == 3  # env over file
    assert config["sys_interval"] == 1.0
    assert config["allow_anonymous"] is False  # boolean flag not passed: file wins
    assert config["max_connections"] == 5  # flag
    assert config["root_log_level"] == 10  # logging.DEBUG from env


def test_flags_beat_env_and_file(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text("port = 1884\nallow_anonymous = false\n")
    env = clean_env(SHARDMQ_PORT="1999", SHARDMQ_LOG_LEVEL="debug")
    config = serve_with_fake_broker(
        "--config",
        str(path),
        "--port",
        "2000",
        "--log-level",
        "WARNING",
        "--allow-anonymous",
        "--connect-timeout",
        "2.5",
        env=env,
    )
    assert config["port"] == 2000
    assert config["log_level"] == "warning"
    assert config["root_log_level"] == 30
    assert config["allow_anonymous"] is True
    assert config["connect_timeout"] == 2.5


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_entry_point_module_runs_without_broker(flag: str) -> None:
    # --help and --version must not import shardmq.broker (or uvloop).
    code = (
        "import sys\n"
        "from shardmq.cli import main\n"
        "try:\n"
        f"    main([{flag!r}], prog_name='shardmq')\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'shardmq.broker' not in sys.modules\n"
        "assert 'uvloop' not in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
