"""Settings: defaults, the four sources and their precedence, validation."""

from __future__ import annotations

import dataclasses
import pickle
import sys
from pathlib import Path

import pytest

from shardmq.config import FIELD_TYPES, Config, env_var, load_config
from shardmq.errors import ConfigError

README = Path(__file__).resolve().parent.parent / "README.md"


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shardmq.toml"
    path.write_text(text, encoding="utf-8")
    return path


# -- defaults and sources --------------------------------------------------------


def test_defaults_with_no_sources() -> None:
    config = load_config(env={})
    assert config == Config()
    assert config.host == "0.0.0.0"
    assert config.port == 1883
    assert config.workers == 1
    assert config.store == "memory"
    assert config.server_keep_alive is None


def test_toml_file_values(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
        host = "127.0.0.1"
        port = 1884
        connect_timeout = 5          # an int is fine for a float setting
        retain_available = false
        log_level = "DEBUG"
        app = "myapp.hooks:setup"
        """,
    )
    config = load_config(config_file=path, env={})
    assert config.host == "127.0.0.1"
    assert config.port == 1884
    assert config.connect_timeout == 5.0
    assert isinstance(config.connect_timeout, float)
    assert config.retain_available is False
    assert config.log_level == "debug"
    assert config.app == "myapp.hooks:setup"
    assert config.workers == 1  # untouched settings keep their defaults


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "port = 1885\n")
    config = load_config(env={"SHARDMQ_CONFIG": str(path)})
    assert config.port == 1885


def test_explicit_config_file_beats_shardmq_config(tmp_path: Path) -> None:
    chosen = write_toml(tmp_path, "port = 1886\n")
    other = tmp_path / "other.toml"
    other.write_text("port = 1887\n")
    config = load_config(config_file=str(chosen), env={"SHARDMQ_CONFIG": str(other)})
    assert config.port == 1886


def test_env_overrides_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "port = 1884\nmax_connections = 10\n")
    config = load_config(config_file=path, env={"SHARDMQ_PORT": "1999"})
    assert config.port == 1999
    assert config.max_connections == 10


def test_flags_override_env_and_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "port = 1884\nworkers = 2\nsys_interval = 3\n")
    env = {"SHARDMQ_PORT": "1999", "SHARDMQ_WORKERS": "3"}
    config = load_config({"port": 2000}, config_file=path, env=env)
    assert config.port == 2000
    assert config.workers == 3
    assert config.sys_interval == 3.0


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("max_connections", "100", 100),
        ("max_connections", " 7 ", 7),
        ("connect_timeout", "2.5", 2.5),
        ("host", "::1", "::1"),
        ("response_information", "", ""),
        ("server_keep_alive", "30", 30),
        ("server_keep_alive", "", None),
        ("server_keep_alive", "None", None),
        ("app", "none", None),
        ("app", "pkg.mod:attr", "pkg.mod:attr"),
        ("retain_available", "0", False),
        ("retain_available", "false", False),
        ("retain_available", "No", False),
        ("retain_available", "off", False),
        ("queue_qos0_offline", "1", True),
        ("queue_qos0_offline", "TRUE", True),
        ("queue_qos0_offline", "yes", True),
        ("queue_qos0_offline", "on", True),
    ],
)
def test_env_values_are_parsed_by_type(name: str, text: str, expected: object) -> None:
    config = load_config(env={env_var(name): text})
    assert getattr(config, name) == expected
    assert type(getattr(config, name)) is type(expected)


def test_unrelated_shardmq_variables_are_ignored() -> None:
    assert load_config(env={"SHARDMQ_TEST_REDIS_URL": "redis://x"}) == Config()


def test_every_field_has_an_env_var() -> None:
    for field in dataclasses.fields(Config):
        assert env_var(field.name) == "SHARDMQ_" + field.name.upper()


# -- validation ---------------------------------------------------------------------

BAD_VALUES = [
    ("port", -1),
    ("port", 65536),
    ("port", 70000),
    ("workers", 0),
    ("max_connections", -1),
    ("connect_timeout", 0),
    ("connect_timeout", -1.5),
    ("connect_timeout", float("nan")),
    ("connect_timeout", float("inf")),
    ("max_packet_size", 0),
    ("max_packet_size", 127),
    ("max_packet_size", 268_435_461),
    ("receive_maximum", 0),
    ("receive_maximum", 65536),
    ("max_inflight", 0),
    ("max_inflight", 65536),
    ("topic_alias_maximum", -1),
    ("topic_alias_maximum", 65536),
    ("maximum_qos", -1),
    ("maximum_qos", 3),
    ("max_keep_alive", -1),
    ("max_keep_alive", 65536),
    ("server_keep_alive", -1),
    ("server_keep_alive", 65536),
    ("max_session_expiry_interval", -1),
    ("max_session_expiry_interval", 0x1_0000_0000),
    ("max_queued_messages", -1),
    ("queue_drop_policy", "random"),
    ("sys_interval", -1),
    ("store", "sqlite"),
    ("redis_url", "localhost:6379"),
    ("redis_url", "http://127.0.0.1:6379"),
    ("redis_prefix", ""),
    ("redis_connect_timeout", 0),
    ("store_timeout", -1),
    ("node_timeout", 0),
    ("node_timeout", -2.0),
    ("node_id", ""),
    ("node_id", "two words"),
    ("node_id", "tab\there"),
    ("cluster", 1),
    ("cluster", "yes"),
    ("log_level", "verbose"),
    ("max_outgoing_buffer", 0),
    ("app", "no_colon"),
    ("app", ":attr"),
    ("password_file", ""),
    ("password_file", "/nonexistent/shardmq-passwd"),
    ("acl_file", ""),
    ("acl_file", "/nonexistent/shardmq-acl"),
    ("auth_redis_algorithm", "sha1"),
    ("auth_redis_salt_position", "middle"),
    ("auth_redis_pbkdf2_mac_fun", "sha3"),
    ("auth_redis_pbkdf2_iterations", 0),
    ("auth_redis_pbkdf2_dk_length", 0),
    ("auth_cache_ttl", -1),
    # wrong types
    ("port", "1883"),
    ("port", 1883.0),
    ("port", True),
    ("workers", None),
    ("max_connections", "abc"),
    ("connect_timeout", "10"),
    ("connect_timeout", False),
    ("retain_available", 1),
    ("retain_available", "yes"),
    ("host", 127),
    ("log_level", 10),
    ("server_keep_alive", "30"),
    ("allow_anonymous", "yes"),
    ("auth_redis", 1),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_bad_value_built_directly_names_the_setting(name: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        Config(**{name: value})  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith(f"{name}: ")
    assert info.value.setting == name
    assert "\n" not in message


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_bad_flag_names_the_setting_and_the_flag(name: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({name: value}, env={})
    assert str(info.value).startswith(f"{name}: ")
    assert str(info.value).endswith("(from --" + name.replace("_", "-") + ")")


def test_replace_is_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"^workers: "):
        dataclasses.replace(Config(), workers=0)


def test_store_error_lists_the_stores() -> None:
    with pytest.raises(ConfigError, match="'memory', 'redis'"):
        Config(store="sqlite")
    assert Config(store="REDIS").store == "redis"


def test_cluster_defaults() -> None:
    config = Config()
    assert (config.cluster, config.node_id, config.node_timeout) == (False, None, 10.0)


def test_cluster_needs_the_redis_store() -> None:
    with pytest.raises(ConfigError) as info:
        Config(cluster=True)
    assert info.value.setting == "cluster"
    assert str(info.value) == "cluster: requires store = \"redis\" (got 'memory')"
    with pytest.raises(ConfigError, match=r"^cluster: .*\(from --cluster\)$"):
        load_config({"cluster": True}, env={})
    assert Config(cluster=True, store="redis").cluster is True


def test_cluster_needs_an_explicit_redis_url(tmp_path: Path) -> None:
    """The default URL would give each host its own Redis: a broker that
    believes it is a cluster of one; so with cluster the URL must be given."""
    with pytest.raises(ConfigError) as info:
        load_config({"cluster": True, "store": "redis"}, env={})
    assert info.value.setting == "redis_url"
    assert str(info.value).endswith("(from --cluster)")
    assert "\n" not in str(info.value)
    url = "redis://10.0.0.5:6379/0"
    config = load_config({"cluster": True, "store": "redis", "redis_url": url}, env={})
    assert (config.cluster, config.redis_url) == (True, url)
    env = {
        "SHARDMQ_CLUSTER": "on",
        "SHARDMQ_STORE": "redis",
        "SHARDMQ_REDIS_URL": url,
        "SHARDMQ_NODE_ID": "eu-1",
        "SHARDMQ_NODE_TIMEOUT": "2.5",
    }
    config = load_config(env=env)
    assert (config.cluster, config.node_id, config.node_timeout) == (True, "eu-1", 2.5)
    path = write_toml(tmp_path, f'cluster = true\nstore = "redis"\nredis_url = "{url}"\n')
    assert load_config(config_file=path, env={}).cluster is True


def test_a_redis_cluster_is_named_by_its_url_or_by_redis_cluster() -> None:
    from shardmq.storage.redis import cluster_target

    config = load_config({"store": "redis", "redis_url": "redis+cluster://10.0.0.5:7000"}, env={})
    assert cluster_target(config.redis_url, config.redis_cluster) == (
        "redis://10.0.0.5:7000",
        True,
    )
    env = {"SHARDMQ_REDIS_URL": "rediss://10.0.0.5:7000", "SHARDMQ_REDIS_CLUSTER": "true"}
    config = load_config(env=env)
    assert cluster_target(config.redis_url, config.redis_cluster) == (
        "rediss://10.0.0.5:7000",
        True,
    )
    config = load_config({"redis_url": "rediss+cluster://h:1"}, env={})
    assert cluster_target(config.redis_url, config.redis_cluster) == ("rediss://h:1", True)
    config = load_config({"redis_url": "redis://h:1/0"}, env={})
    assert cluster_target(config.redis_url, config.redis_cluster) == ("redis://h:1/0", False)
    with pytest.raises(ConfigError) as info:
        Config(redis_url="http+cluster://h:1")
    assert str(info.value).startswith("redis_url: ")


def test_bad_redis_url_error_does_not_echo_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        Config(redis_url="http://user:hunter2@127.0.0.1:6379")
    assert str(info.value).startswith("redis_url: ")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("port", 0), ("port", 65535), ("max_packet_size", 128), ("max_packet_size", 268_435_460)],
)
def test_edge_values_are_accepted(name: str, value: int) -> None:
    assert getattr(Config(**{name: value}), name) == value  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("max_connections", "abc"),
        ("max_connections", ""),
        ("port", "1883.5"),
        ("port", "99999"),
        ("connect_timeout", "soon"),
        ("retain_available", "maybe"),
        ("server_keep_alive", "forever"),
        ("workers", "0"),
    ],
)
def test_bad_env_value_names_the_setting_and_the_variable(name: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={env_var(name): text})
    assert str(info.value).startswith(f"{name}: ")
    assert str(info.value).endswith(f"(from {env_var(name)})")


def test_bad_toml_value_names_the_setting_and_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'port = "1883"\n')
    with pytest.raises(ConfigError) as info:
        load_config(config_file=path, env={})
    assert str(info.value).startswith("port: expected an integer")
    assert str(path) in str(info.value)


def test_unknown_toml_key_is_named(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "port = 1884\nmax_conections = 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(config_file=path, env={})
    message = str(info.value)
    assert message.startswith("max_conections: unknown setting")
    assert str(path) in message
    assert "max_connections" in message  # the suggestion


def test_tables_are_not_settings(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[broker]\nport = 1884\n")
    with pytest.raises(ConfigError, match=r"^broker: unknown setting"):
        load_config(config_file=path, env={})


def test_unknown_flag_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^prot: unknown setting"):
        load_config({"prot": 1}, env={})


def test_bad_toml_syntax_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "port = \n[[[\n")
    with pytest.raises(ConfigError) as info:
        load_config(config_file=path, env={})
    message = str(info.value)
    assert message.startswith(f"config: {path}: invalid TOML")
    assert "\n" not in message


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"^config: .*nope\.toml: no such file"):
        load_config(config_file=path, env={})


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'host = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"^config: .*latin1\.toml: "):
        load_config(config_file=path, env={})


# -- access control ------------------------------------------------------------------

PASSWD_LINE = (
    "alice:$7$101$GFpOLVaMxLPnEUXP$qilHG5eW7FaXemOcldmfwgIQMMQK1MLiE1BbpZG0kx200F"
    "mXPYtZXsviDinwgeANEcYEmSa2r2F9Iabd/vwC7A==\n"
)


def write_auth_files(tmp_path: Path) -> tuple[Path, Path]:
    passwd = tmp_path / "passwd"
    passwd.write_text(PASSWD_LINE, encoding="utf-8")
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic readwrite alice/#\n", encoding="utf-8")
    return passwd, acl


def test_auth_defaults() -> None:
    config = Config()
    assert config.password_file is None and config.acl_file is None
    assert config.allow_anonymous is True
    assert config.auth_redis is False
    assert config.auth_redis_algorithm == "sha256"
    # issue 11 asks for the salt as suffix; EMQX 5 defaults to prefix
    assert config.auth_redis_salt_position == "suffix"
    assert config.auth_redis_pbkdf2_dk_length is None
    assert config.auth_cache_ttl == 30.0


@pytest.mark.parametrize(
    ("settings", "anonymous"),
    [
        ({}, True),
        ({"password_file": "P"}, False),
        ({"auth_redis": True}, False),
        ({"acl_file": "A"}, True),  # an ACL alone restricts topics, not who connects
        ({"password_file": "P", "allow_anonymous": True}, True),
        ({"allow_anonymous": False}, False),
        ({"allow_anonymous": None}, True),
    ],
)
def test_allow_anonymous_unset_follows_the_credential_sources(
    tmp_path: Path, settings: dict[str, object], anonymous: bool
) -> None:
    passwd, acl = write_auth_files(tmp_path)
    paths = {"P": str(passwd), "A": str(acl)}
    values = {k: paths.get(v, v) if isinstance(v, str) else v for k, v in settings.items()}
    config = Config(**values)  # type: ignore[arg-type]
    assert config.allow_anonymous is anonymous


def test_allow_anonymous_from_env_and_file(tmp_path: Path) -> None:
    passwd, _ = write_auth_files(tmp_path)
    env = {"SHARDMQ_PASSWORD_FILE": str(passwd)}
    assert load_config(env=env).allow_anonymous is False
    assert load_config(env={**env, "SHARDMQ_ALLOW_ANONYMOUS": "true"}).allow_anonymous is True
    assert load_config(env={**env, "SHARDMQ_ALLOW_ANONYMOUS": ""}).allow_anonymous is False
    path = write_toml(tmp_path, f'password_file = "{passwd}"\nallow_anonymous = true\n')
    assert load_config(config_file=path, env={}).allow_anonymous is True


def test_replace_keeps_a_resolved_allow_anonymous(tmp_path: Path) -> None:
    """Config resolves allow_anonymous when built; replace() copies that value
    unless told to resolve again (the field's comment says so)."""
    passwd, _ = write_auth_files(tmp_path)
    base = Config()
    assert dataclasses.replace(base, password_file=str(passwd)).allow_anonymous is True
    again = dataclasses.replace(base, password_file=str(passwd), allow_anonymous=None)
    assert again.allow_anonymous is False


def test_auth_files_are_parsed_when_loading(tmp_path: Path) -> None:
    passwd, acl = write_auth_files(tmp_path)
    config = load_config({"password_file": str(passwd), "acl_file": str(acl)}, env={})
    assert config.password_file == str(passwd) and config.acl_file == str(acl)

    acl.write_text("user alice\ntopic rw alice/#\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config({"acl_file": str(acl)}, env={})
    assert str(info.value) == (
        f"acl_file: {acl}:2: unknown access 'rw', expected one of 'read', 'write', "
        "'readwrite', 'deny' (from --acl-file)"
    )

    passwd.write_text("# users\n" + PASSWD_LINE + "bob\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(env={"SHARDMQ_PASSWORD_FILE": str(passwd)})
    assert str(info.value) == (
        f"password_file: {passwd}:3: expected 'username:hash' (from SHARDMQ_PASSWORD_FILE)"
    )


def test_missing_auth_file_names_file_and_source(tmp_path: Path) -> None:
    path = write_toml(tmp_path, f'password_file = "{tmp_path / "nope"}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(config_file=path, env={})
    assert str(info.value) == f"password_file: {tmp_path / 'nope'}: no such file (from {path})"


def test_auth_redis_choices_are_case_insensitive() -> None:
    config = Config(
        auth_redis=True, auth_redis_algorithm="SHA512", auth_redis_salt_position="Suffix"
    )
    assert config.auth_redis_algorithm == "sha512"
    assert config.auth_redis_salt_position == "suffix"


def test_auth_redis_needs_a_redis_url() -> None:
    with pytest.raises(ConfigError) as info:
        Config(auth_redis=True, redis_url="")
    assert info.value.setting == "redis_url"


def test_auth_redis_bcrypt_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bcrypt", None)  # as if not installed
    with pytest.raises(ConfigError) as info:
        load_config({"auth_redis": True, "auth_redis_algorithm": "bcrypt"}, env={})
    assert str(info.value) == (
        "auth_redis_algorithm: bcrypt needs the bcrypt package: "
        "pip install 'shardmq[auth-bcrypt]' (from --auth-redis-algorithm)"
    )
    # unused while auth_redis is off: no error
    assert Config(auth_redis_algorithm="bcrypt").auth_redis_algorithm == "bcrypt"


def test_auth_redis_pbkdf2_settings() -> None:
    config = Config(
        auth_redis=True,
        auth_redis_algorithm="pbkdf2",
        auth_redis_pbkdf2_mac_fun="sha512",
        auth_redis_pbkdf2_iterations=1000,
        auth_redis_pbkdf2_dk_length=32,
    )
    assert (config.auth_redis_pbkdf2_iterations, config.auth_redis_pbkdf2_dk_length) == (1000, 32)


# -- shape ---------------------------------------------------------------------------


def test_config_is_frozen_and_pickles() -> None:
    config = Config(port=1999)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(config)) == config


def test_every_field_type_is_supported() -> None:
    assert set(FIELD_TYPES) == {field.name for field in dataclasses.fields(Config)}


#: Settings whose README rows are still to be written (none today). Remove a
#: name here once README documents it: the second test below insists.
README_PENDING: frozenset[str] = frozenset()


def _undocumented(text: str) -> set[str]:
    return {
        field.name
        for field in dataclasses.fields(Config)
        if f"`{field.name}`" not in text or f"`{env_var(field.name)}`" not in text
    }


def test_readme_documents_every_setting() -> None:
    missing = _undocumented(README.read_text(encoding="utf-8")) - README_PENDING
    assert not missing, f"README configuration reference lacks {sorted(missing)}"


def test_readme_pending_list_is_current() -> None:
    pending = README_PENDING & _undocumented(README.read_text(encoding="utf-8"))
    assert set(FIELD_TYPES) >= README_PENDING, "README_PENDING names a setting that is gone"
    assert pending == README_PENDING, f"README documents {sorted(README_PENDING - pending)} now"
