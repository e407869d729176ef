"""The ``shardmq`` command, run as a real subprocess (``python -m shardmq``).

No real broker is started here: error paths fail before ``broker.serve`` is
imported, and the precedence tests swap in a stand-in ``shardmq.broker`` that
prints the config it was given.
"""

from __future__ import annotations

import json
import os
import pty
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import shardmq

ROOT = Path(__file__).resolve().parent.parent

# Runs the real CLI with a stand-in broker whose serve() prints the config
# and the root logger's level as JSON.
FAKE_BROKER = """
import dataclasses, json, logging, sys, types
broker = types.ModuleType("shardmq.broker")
def serve(config, reload_source=None):
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


# -- serve: access-control flags ------------------------------------------------------

PASSWD_LINE = (
    "alice:$7$101$GFpOLVaMxLPnEUXP$qilHG5eW7FaXemOcldmfwgIQMMQK1MLiE1BbpZG0kx200F"
    "mXPYtZXsviDinwgeANEcYEmSa2r2F9Iabd/vwC7A==\n"
)


def test_auth_flags_reach_serve(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text(PASSWD_LINE)
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic alice/#\n")
    config = serve_with_fake_broker(
        "--password-file", str(passwd), "--acl-file", str(acl), env=clean_env()
    )
    assert config["password_file"] == str(passwd)
    assert config["acl_file"] == str(acl)
    assert config["allow_anonymous"] is False  # a password file turns anonymous off ...
    config = serve_with_fake_broker(
        "--password-file", str(passwd), "--allow-anonymous", env=clean_env()
    )
    assert config["allow_anonymous"] is True  # ... unless asked otherwise
    config = serve_with_fake_broker("--auth-redis", env=clean_env())
    assert config["auth_redis"] is True and config["allow_anonymous"] is False


def test_bad_acl_file_is_one_line_with_its_line_number(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic sometimes alice/#\n")
    line = assert_config_error(shardmq_cmd("serve", "--acl-file", str(acl)), "acl_file")
    assert f"{acl}:2: unknown access 'sometimes'" in line
    assert line.endswith("(from --acl-file)")


def test_serve_help_lists_auth_flags() -> None:
    proc = shardmq_cmd("serve", "--help")
    for flag in ("--password-file", "--acl-file", "--auth-redis", "--no-allow-anonymous"):
        assert flag in proc.stdout
    assert "SHARDMQ_PASSWORD_FILE" in proc.stdout


# -- passwd ---------------------------------------------------------------------------


def assert_passwd_error(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("shardmq passwd: error: "), lines[0]
    assert fragment in lines[0]


def test_passwd_create_update_delete(tmp_path: Path) -> None:
    from shardmq.auth.passwd import PasswordFile

    path = tmp_path / "passwd"
    proc = shardmq_cmd("passwd", "-c", "-b", str(path), "alice", "one")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == proc.stderr == ""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert PasswordFile.load(path).verify("alice", "one")
    assert path.read_text().startswith("alice:$7$101$")

    assert shardmq_cmd("passwd", "-b", str(path), "bob", "two").returncode == 0
    assert shardmq_cmd("passwd", "-b", str(path), "alice", "three").returncode == 0
    entries = PasswordFile.load(path)
    assert entries.users() == ["alice", "bob"]
    assert entries.verify("alice", "three") and not entries.verify("alice", "one")
    assert entries.verify("bob", "two")

    assert shardmq_cmd("passwd", "-D", str(path), "alice").returncode == 0
    assert PasswordFile.load(path).users() == ["bob"]

    # -c starts over
    assert shardmq_cmd("passwd", "-c", "-b", str(path), "carol", "four").returncode == 0
    assert PasswordFile.load(path).users() == ["carol"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["-c", "-D", "{f}", "alice"], "-c and -D cannot be used together"),
        (["-b", "-D", "{f}", "alice", "pw"], "-b and -D cannot be used together"),
        (["-b", "{f}", "alice"], "-b needs the password"),
        (["{f}", "alice", "pw"], "needs -b"),
        (["-D", "{f}", "nobody"], "user 'nobody' is not in"),
        (["-b", "{f}", "a:b", "pw"], "username must not contain ':'"),
        (["-b", "{missing}", "alice", "pw"], "no such file"),
        (["-b", "{bad}", "alice", "pw"], ":2: expected 'username:hash'"),
    ],
)
def test_passwd_errors_are_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    good = tmp_path / "passwd"
    good.write_text(PASSWD_LINE)
    bad = tmp_path / "bad"
    bad.write_text(PASSWD_LINE + "garbage\n")
    names = {"f": str(good), "missing": str(tmp_path / "missing"), "bad": str(bad)}
    proc = shardmq_cmd("passwd", *[arg.format(**names) for arg in args])
    assert_passwd_error(proc, fragment)
    assert good.read_text() == PASSWD_LINE  # nothing was written
    assert not (tmp_path / "missing").exists()


def _run_on_a_terminal(args: list[str], typed: list[str]) -> tuple[int, str]:
    """Run ``python -m shardmq *args`` on a pseudo-terminal, typing each line
    once its prompt has appeared; return the exit status and the screen."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardmq", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=clean_env(),
        cwd=ROOT,
        close_fds=True,
    )
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 30
    pending = list(typed)
    prompts_answered = 0
    try:
        while True:
            assert time.monotonic() < deadline, screen
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                screen += chunk
                # Type only at a new prompt: getpass turns echo off before it
                # prints one and flushes what was typed earlier.
                prompts = screen.lower().count(b"password: ")
                if pending and prompts > prompts_answered and screen.endswith(b": "):
                    os.write(master, pending.pop(0).encode() + b"\r")
                    prompts_answered = prompts
            elif proc.poll() is not None:
                break
        return proc.wait(30), screen.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_passwd_prompts_twice_without_echo(tmp_path: Path) -> None:
    from shardmq.auth.passwd import PasswordFile

    path = tmp_path / "passwd"
    status, screen = _run_on_a_terminal(
        ["passwd", "-c", str(path), "alice"], ["hidden-pw", "hidden-pw"]
    )
    assert status == 0, screen
    assert "Password:" in screen and "Reenter password:" in screen
    assert "hidden-pw" not in screen  # not echoed
    assert PasswordFile.load(path).verify("alice", "hidden-pw")


def test_passwd_prompt_mismatch_asks_again(tmp_path: Path) -> None:
    from shardmq.auth.passwd import PasswordFile

    path = tmp_path / "passwd"
    status, screen = _run_on_a_terminal(
        ["passwd", "-c", str(path), "alice"], ["first", "second", "third", "third"]
    )
    assert status == 0, screen
    assert "do not match" in screen
    assert PasswordFile.load(path).verify("alice", "third")
