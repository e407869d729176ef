"""Broker settings: plain frozen data, safe to hand across fork().

``Config`` holds every setting with its default and checks itself when built,
so ``Config(port=70000)`` raises ``ConfigError`` however it was made.
``load_config`` builds one from four sources; a later source wins:

1. defaults (the field defaults below),
2. a TOML file (``config_file``, else the path in ``SHARDMQ_CONFIG``), whose
   top-level keys are the field names; an unknown key is an error,
3. environment variables ``SHARDMQ_<FIELD_NAME_UPPER>`` (``SHARDMQ_PORT=1884``),
   parsed by the field's type; other ``SHARDMQ_*`` variables are ignored,
4. command-line flags (``flags``: only the flags the user actually passed).

So: flags > environment > TOML file > defaults. Every error is a one-line
``ConfigError`` naming the setting and, when loading, where the value came from.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from .auth.acl import AclFile
from .auth.hashing import ALGORITHMS, PBKDF2_MAC_FUNS, SALT_POSITIONS, PasswordHasher
from .auth.passwd import PasswordFile
from .errors import ConfigError
from .protocol.constants import MAX_PACKET_SIZE_LIMIT
from .supervisor.arbiter import resolve_workers

#: Listener types: MQTT over TCP, TLS, WebSocket and WebSocket over TLS.
LISTENER_TYPES = ("tcp", "tls", "ws", "wss")


@dataclass(frozen=True)
class Listener:
    """One extra listener (``[[listeners]]`` in the TOML file).

    ``None`` means "the top-level setting of the same name": ``host``,
    ``certfile``, ``keyfile``, ``cafile`` and ``require_client_cert``.
    """

    type: str
    port: int
    host: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    cafile: str | None = None
    require_client_cert: bool | None = None
    #: OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults)
    ciphers: str | None = None
    #: WebSocket path
    path: str = "/mqtt"
    #: Origin header values accepted from browsers (ws, wss); empty accepts any.
    allowed_origins: tuple[str, ...] = ()
    #: Expect a PROXY protocol v1/v2 header before anything else.
    proxy_protocol: bool = False
    #: Connections at once on this listener (per worker; the one over it gets
    #: CONNACK 0x89 Server busy, 3.1.1 return code 3); 0: only max_connections.
    max_connections: int = 0


@dataclass(frozen=True)
class Config:
    """Every broker setting. Built directly, from ``load_config``, or with
    ``dataclasses.replace``; each way runs the same checks."""

    # -- listener ----------------------------------------------------------
    host: str = "0.0.0.0"
    port: int = 1883
    #: Workers (processes); 1 for the single-process broker. The flag, the
    #: environment and the file also take "auto": one per usable CPU.
    workers: int = 1
    log_level: str = "info"
    #: "text" (one human-readable line per record) or "json" (one JSON object
    #: per line: time, level, logger, worker, message, client_id, event, exc).
    log_format: str = "text"
    #: One info line per accepted CONNECT and one per connection end (reason).
    log_connections: bool = True
    #: "module:attr" naming a Broker or a function(broker) that registers hooks.
    app: str | None = None

    # -- worker processes (the supervisor) -------------------------------------
    #: Pin worker i to one CPU (i modulo the CPUs this process may run on).
    pin: bool = False
    #: Seconds a worker's event loop may go without a heartbeat before the
    #: supervisor kills and restarts the worker.
    heartbeat_timeout: float = 10.0
    #: Seconds workers get to finish after SIGTERM before they are killed.
    shutdown_timeout: float = 10.0

    # -- connections ---------------------------------------------------------
    #: 0 means unlimited.
    max_connections: int = 0
    #: Seconds a new connection has to send its CONNECT.
    connect_timeout: float = 10.0
    #: Bytes queued to one client before it is disconnected as too slow.
    max_outgoing_buffer: int = 16 * 1024 * 1024
    #: New connections per second from one source address (per worker); over
    #: it they are closed before their CONNECT is read. 0 is unlimited.
    connection_rate: float = 0.0

    # -- limits per client -----------------------------------------------------
    #: Subscriptions one client may hold (SUBACK 0x97, 3.1.1 0x80). 0 is unlimited.
    max_subscriptions: int = 0
    #: PUBLISH packets per second one client may send; 0 is unlimited.
    publish_rate: float = 0.0
    #: PUBLISH payload bytes per second one client may send; 0 is unlimited.
    publish_byte_rate: float = 0.0
    #: Over either rate: "disconnect" (v5: DISCONNECT 0x96) or "pause"
    #: (stop reading the client until it is back within the rate).
    publish_rate_action: str = "disconnect"

    # -- limits advertised in CONNACK ----------------------------------------
    #: Largest packet the broker accepts (Maximum Packet Size property).
    max_packet_size: int = 16 * 1024 * 1024
    #: Inbound QoS 1/2 PUBLISHes a client may have unacknowledged.
    receive_maximum: int = 1024
    #: Outbound QoS 1/2 messages in flight per client (also capped by the
    #: client's own Receive Maximum).
    max_inflight: int = 1024
    #: Topic aliases a client may use towards the broker.
    topic_alias_maximum: int = 1024
    maximum_qos: int = 2
    retain_available: bool = True
    wildcard_subscription_available: bool = True
    subscription_identifier_available: bool = True
    shared_subscription_available: bool = True
    #: Largest keep alive accepted; a client asking for more (or for 0 when
    #: this is set below 65535) is told the server keep alive instead.
    max_keep_alive: int = 65535
    #: When set, overrides every v5 client's keep alive (Server Keep Alive).
    #: 3.1.1 has no way to tell a client, so 3.1.1 clients keep their own.
    server_keep_alive: int | None = None
    #: What a 3.1.1 client asking for a keep alive above max_keep_alive (or
    #: for 0, while max_keep_alive is below 65535) gets: "refuse" (CONNACK
    #: return code 2, as Mosquitto's max_keepalive) or "accept" (connected,
    #: its own keep alive enforced; 0 means never timed out).
    v311_keep_alive: str = "refuse"
    #: Upper bound on the session expiry a client may ask for (seconds).
    max_session_expiry_interval: int = 0xFFFFFFFF

    # -- sessions -----------------------------------------------------------
    #: Messages queued per session while offline or while the client's
    #: receive window is full.
    max_queued_messages: int = 1000
    #: Which message is dropped when the queue is full: "oldest" or "newest".
    queue_drop_policy: str = "oldest"
    #: Queue QoS 0 messages for offline persistent sessions.
    queue_qos0_offline: bool = False
    #: Response Information returned when a v5 client requests it; the
    #: client id is appended. Empty disables it.
    response_information: str = "response/"
    #: Accept clients that send no username. None (unset): yes, unless
    #: password_file or auth_redis is set. Config resolves it to a bool when
    #: built, so dataclasses.replace(config, password_file=...) keeps the
    #: resolved value: pass allow_anonymous=None with it to resolve again.
    allow_anonymous: bool | None = None

    # -- $SYS ----------------------------------------------------------------
    #: Seconds between $SYS publications; 0 disables them.
    sys_interval: float = 10.0

    # -- operating: metrics and health -----------------------------------------
    #: HTTP port of /metrics (Prometheus), /healthz and /readyz, served once
    #: for the whole broker (by worker 0); None: no HTTP port.
    metrics_port: int | None = None
    #: Address of that port; None: ``host``.
    metrics_host: str | None = None
    #: The admin API's token on that port (``Authorization: Bearer <token>``;
    #: ``shardmq ctl`` reads it from SHARDMQ_ADMIN_TOKEN too); None: the
    #: admin routes are off.
    admin_token: str | None = None

    # -- storage --------------------------------------------------------------
    #: "memory" (optionally snapshotted to persistence_file) or "redis".
    store: str = "memory"
    #: memory store: snapshot file written at shutdown and every
    #: autosave_interval seconds, loaded at start.
    persistence_file: str | None = None
    #: seconds between snapshots; 0: only at shutdown.
    autosave_interval: float = 300.0
    #: redis store: redis://[user:password@]host:port/db (rediss:// for TLS).
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: redis store: the prefix of every key it writes.
    redis_prefix: str = "shardmq"
    #: redis_url names a seed node of a Redis Cluster (so does a
    #: redis+cluster:// URL).
    redis_cluster: bool = False
    #: redis store: seconds to keep retrying Redis at start before giving up.
    redis_connect_timeout: float = 10.0
    #: seconds a QoS 1/2 acknowledgement waits for the store before it is
    #: answered with 0x80 "store unavailable".
    store_timeout: float = 5.0
    #: redis store: bytes of changes kept while Redis is unreachable; beyond,
    #: they are dropped and everything is rewritten once Redis is back.
    redis_backlog_limit: int = 256 * 1024 * 1024

    # -- several hosts (nodes joined through Redis) --------------------------------
    #: Join every node with the same Redis and redis_prefix into one broker.
    #: Needs store = "redis" and an explicit redis_url.
    cluster: bool = False
    #: This node's name among the others; None: "<hostname>:<port>".
    node_id: str | None = None
    #: Seconds a node's heartbeat lives: a node silent this long is dead.
    node_timeout: float = 10.0

    # -- access control ---------------------------------------------------------
    #: Mosquitto password file (``shardmq passwd`` or mosquitto_passwd writes it).
    password_file: str | None = None
    #: Mosquitto ACL file: topic/user/pattern lines.
    acl_file: str | None = None
    #: Credentials and ACLs from Redis at redis_url, in EMQX's layout
    #: (HASH mqtt_user:<name>, HASH mqtt_acl:<name>).
    auth_redis: bool = False
    #: plain, md5, sha, sha256, sha512, pbkdf2 or bcrypt (the bcrypt extra).
    auth_redis_algorithm: str = "sha256"
    #: Where the salt goes for the simple algorithms: suffix (hash(password +
    #: salt), the default), prefix or disable. EMQX 5 defaults to prefix: set
    #: it when moving users whose hashes EMQX made with its default.
    auth_redis_salt_position: str = "suffix"
    #: pbkdf2: the HMAC's hash, iteration count and key length (None: the hash's size).
    auth_redis_pbkdf2_mac_fun: str = "sha256"
    auth_redis_pbkdf2_iterations: int = 4096
    auth_redis_pbkdf2_dk_length: int | None = None
    #: Seconds Redis credentials and ACLs are cached; 0 disables the cache.
    auth_cache_ttl: float = 30.0

    # -- TLS, WebSocket and other listeners ------------------------------------
    #: Extra listeners besides host:port (see ``Listener``).
    listeners: tuple[Listener, ...] = ()
    #: Shortcuts for one extra listener each, on ``host``, using the files below.
    tls_port: int | None = None
    ws_port: int | None = None
    wss_port: int | None = None
    #: Server certificate chain and key (PEM) for tls and wss listeners.
    certfile: str | None = None
    keyfile: str | None = None
    #: CA certificates (PEM) that client certificates are verified against.
    cafile: str | None = None
    require_client_cert: bool = False
    #: Use the client certificate's common name as the username (Mosquitto's name).
    use_identity_as_username: bool = False

    def __post_init__(self) -> None:
        _validate(self)


# -- validation -----------------------------------------------------------------

#: Prefix of the environment variables; ``SHARDMQ_CONFIG`` names the TOML file.
ENV_PREFIX = "SHARDMQ_"
CONFIG_FILE_ENV = "SHARDMQ_CONFIG"

#: Smallest packet size limit we accept: a CONNECT with a short client id,
#: a will and credentials must still fit.
MIN_PACKET_SIZE = 128

#: Inclusive bounds; ``None`` means unbounded. Checked after the type.
_RANGES: dict[str, tuple[int | float, int | float | None]] = {
    "port": (0, 65535),  # 0 asks the OS for a free port (embedding, tests)
    "workers": (1, None),
    "max_connections": (0, None),
    "max_outgoing_buffer": (1, None),
    "connection_rate": (0, None),
    "max_subscriptions": (0, None),
    "publish_rate": (0, None),
    "publish_byte_rate": (0, None),
    "max_packet_size": (MIN_PACKET_SIZE, MAX_PACKET_SIZE_LIMIT),
    "receive_maximum": (1, 65535),  # Receive Maximum 0 is a protocol error [MQTT-3.2.2.3.3]
    "max_inflight": (1, 65535),
    "topic_alias_maximum": (0, 65535),
    "maximum_qos": (0, 2),
    "max_keep_alive": (0, 65535),
    "server_keep_alive": (0, 65535),
    "max_session_expiry_interval": (0, 0xFFFFFFFF),
    "max_queued_messages": (0, None),
    "sys_interval": (0, None),
    "autosave_interval": (0, None),
    "redis_backlog_limit": (1024, None),
    "auth_redis_pbkdf2_iterations": (1, None),
    "auth_redis_pbkdf2_dk_length": (1, None),
    "auth_cache_ttl": (0, None),
    "tls_port": (0, 65535),
    "metrics_port": (0, 65535),
    "ws_port": (0, 65535),
    "wss_port": (0, 65535),
}

#: Settings that must be strictly greater than zero.
_POSITIVE = frozenset(
    {
        "connect_timeout",
        "heartbeat_timeout",
        "shutdown_timeout",
        "redis_connect_timeout",
        "store_timeout",
        "node_timeout",
    }
)

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")

#: Allowed values, compared case-insensitively and stored lower-case.
_CHOICES: dict[str, tuple[str, ...]] = {
    "log_level": LOG_LEVELS,
    "log_format": LOG_FORMATS,
    "queue_drop_policy": ("oldest", "newest"),
    "publish_rate_action": ("disconnect", "pause"),
    "v311_keep_alive": ("refuse", "accept"),
    "store": ("memory", "redis"),
    "auth_redis_algorithm": ALGORITHMS,
    "auth_redis_salt_position": SALT_POSITIONS,
    "auth_redis_pbkdf2_mac_fun": PBKDF2_MAC_FUNS,
}

_NOTES: dict[str, str] = {
    "max_packet_size": f"{MAX_PACKET_SIZE_LIMIT} is the MQTT limit",
}

_DESCRIPTIONS: dict[type, str] = {
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    str: "a string",
    tuple: "an array of listener tables",
}


def _field_types() -> dict[str, tuple[type, bool]]:
    """Map each field to ``(base type, accepts None)`` from its annotation."""
    result: dict[str, tuple[type, bool]] = {}
    for name, hint in typing.get_type_hints(Config).items():
        args = typing.get_args(hint)
        if name == "listeners":
            result[name] = (tuple, False)  # checked by _check_listeners
            continue
        if not args:
            result[name] = (hint, False)
            continue
        others = [arg for arg in args if arg is not type(None)]
        if len(others) != 1 or len(args) != 2:
            raise TypeError(f"Config.{name}: unsupported annotation {hint!r}")
        result[name] = (others[0], True)
    return result


#: Built once the class exists; ``Config`` instances are only made after import.
FIELD_TYPES: dict[str, tuple[type, bool]] = _field_types()


def _describe(base: type, optional: bool) -> str:
    return _DESCRIPTIONS[base] + (" or none" if optional else "")


def _type_error(name: str, value: object) -> ConfigError:
    base, optional = FIELD_TYPES[name]
    return ConfigError(
        name, f"expected {_describe(base, optional)}, got {value!r} ({type(value).__name__})"
    )


def _check_type(name: str, value: object) -> object:
    """Return ``value`` (an int widened to float for float fields) or raise."""
    base, optional = FIELD_TYPES[name]
    if value is None and optional:
        return None
    # bool is a subclass of int: True is not a port number.
    if isinstance(value, bool) and base is not bool:
        raise _type_error(name, value)
    if base is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, base):
        raise _type_error(name, value)
    return value


def _check_value(name: str, value: object) -> object:
    """Return ``value`` (choices lower-cased) or raise if it is out of range."""
    note = f" ({_NOTES[name]})" if name in _NOTES else ""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, got {value!r}")
    if name in _RANGES and isinstance(value, int | float):
        low, high = _RANGES[name]
        # Written as "not (in range)" so that NaN fails too.
        if high is None and not value >= low:
            raise ConfigError(name, f"must be at least {low}, got {value!r}{note}")
        if high is not None and not low <= value <= high:
            raise ConfigError(name, f"must be between {low} and {high}, got {value!r}{note}")
    if name in _POSITIVE and isinstance(value, int | float) and not value > 0:
        raise ConfigError(name, f"must be greater than 0, got {value!r}")
    if name in _CHOICES and isinstance(value, str):
        choices = _CHOICES[name]
        if value.lower() not in choices:
            allowed = ", ".join(repr(choice) for choice in choices)
            raise ConfigError(name, f"must be one of {allowed}, got {value!r}{note}")
        return value.lower()
    if name == "redis_url" and isinstance(value, str):
        scheme = value.partition("://")[0].lower()
        schemes = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
        if "://" not in value or scheme not in schemes:
            shown = value.split("@")[-1]  # never echo a password
            raise ConfigError(
                name,
                "expected redis://host:port/db, rediss://..., unix://... or "
                f"redis+cluster://host:port, got {shown!r}",
            )
    if name in ("redis_prefix", "password_file", "acl_file", "admin_token") and value == "":
        raise ConfigError(name, "must not be empty")
    # node_id becomes part of Redis keys and of the heartbeat: printable, one word
    if (
        name == "node_id"
        and isinstance(value, str)
        and (not value or not value.isprintable() or any(c.isspace() for c in value))
    ):
        raise ConfigError(name, f"must be a non-empty word without spaces, got {value!r}")
    if name == "app" and isinstance(value, str):
        module, _, attr = value.partition(":")
        if not module or not attr:
            raise ConfigError(name, f"expected 'module:attr', got {value!r}")
    return value


def _validate(config: Config) -> None:
    """Check every field in declaration order; normalise in place (frozen-safe)."""
    for field in fields(config):
        value = getattr(config, field.name)
        checked: object
        if field.name == "listeners":
            checked = _check_listeners(value)
        else:
            checked = _check_value(field.name, _check_type(field.name, value))
        if checked is not value:
            object.__setattr__(config, field.name, checked)
    if config.admin_token is not None and config.metrics_port is None:
        raise ConfigError("admin_token", "the admin API is served on metrics_port: set it too")
    if config.cluster and config.store != "redis":
        raise ConfigError("cluster", f'requires store = "redis" (got {config.store!r})')
    for label, listener in effective_listeners(config):
        _check_listener_files(label, listener)
    _check_auth(config)


def _check_auth(config: Config) -> None:
    """Parse the auth files now, so a bad line stops the broker at start
    with its line number instead of refusing clients later; resolve an
    unset allow_anonymous."""
    if config.password_file is not None:
        PasswordFile.load(config.password_file)  # AuthFileError names password_file
    if config.acl_file is not None:
        AclFile.load(config.acl_file)
    if config.auth_redis:
        # redis_url itself was checked with the other fields.
        PasswordHasher(  # e.g. bcrypt without the bcrypt package
            config.auth_redis_algorithm,
            config.auth_redis_salt_position,
            pbkdf2_mac_fun=config.auth_redis_pbkdf2_mac_fun,
            pbkdf2_iterations=config.auth_redis_pbkdf2_iterations,
            pbkdf2_dk_length=config.auth_redis_pbkdf2_dk_length,
        )
    if config.allow_anonymous is None:
        credentials = config.password_file is not None or config.auth_redis
        object.__setattr__(config, "allow_anonymous", not credentials)


# -- listeners ------------------------------------------------------------------

_LISTENER_TYPES: dict[str, tuple[type, bool]] = {
    "type": (str, False),
    "port": (int, False),
    "host": (str, True),
    "certfile": (str, True),
    "keyfile": (str, True),
    "cafile": (str, True),
    "require_client_cert": (bool, True),
    "ciphers": (str, True),
    "path": (str, False),
    "allowed_origins": (tuple, False),
    "proxy_protocol": (bool, False),
    "max_connections": (int, False),
}


def _check_listeners(value: object) -> tuple[Listener, ...]:
    """``listeners`` as a tuple of checked ``Listener``s (TOML gives a list of tables)."""
    if not isinstance(value, list | tuple):
        raise ConfigError(
            "listeners", f"expected an array of listener tables, got {type(value).__name__}"
        )
    return tuple(_check_listener(i, item) for i, item in enumerate(value))


def _check_listener(index: int, item: object) -> Listener:
    where = f"listeners[{index}]"
    if isinstance(item, Listener):
        values = {f.name: getattr(item, f.name) for f in fields(Listener)}
    elif isinstance(item, Mapping):
        values = dict(item)
        for key in values:
            if key not in _LISTENER_TYPES:
                close = difflib.get_close_matches(str(key), _LISTENER_TYPES, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"{where}.{key}", f"unknown listener setting{hint}")
        for key in ("type", "port"):
            if key not in values:
                raise ConfigError(f"{where}.{key}", "missing")
    else:
        raise ConfigError(where, f"expected a table, got {type(item).__name__}")
    for key, value in values.items():
        base, optional = _LISTENER_TYPES[key]
        name = f"{where}.{key}"
        if value is None and optional:
            continue
        if base is tuple:
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ConfigError(name, f"expected an array of strings, got {value!r}")
            values[key] = tuple(value)
        elif isinstance(value, bool) and base is not bool or not isinstance(value, base):
            raise ConfigError(
                name,
                f"expected {_describe(base, optional)}, got {value!r} ({type(value).__name__})",
            )
    kind = str(values["type"]).lower()
    if kind not in LISTENER_TYPES:
        allowed = ", ".join(repr(t) for t in LISTENER_TYPES)
        raise ConfigError(f"{where}.type", f"must be one of {allowed}, got {values['type']!r}")
    values["type"] = kind
    if not 0 <= int(values["port"]) <= 65535:  # type: ignore[call-overload, unused-ignore]
        raise ConfigError(f"{where}.port", f"must be between 0 and 65535, got {values['port']!r}")
    if int(values.get("max_connections", 0)) < 0:  # type: ignore[call-overload, unused-ignore]
        raise ConfigError(f"{where}.max_connections", "must be at least 0")
    path = values.get("path", "/mqtt")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(f"{where}.path", f"must start with '/', got {path!r}")
    return Listener(**values)  # type: ignore[arg-type, unused-ignore]


def effective_listeners(config: Config) -> list[tuple[str, Listener]]:
    """Every extra listener, with the top-level settings filled in, and the
    name its errors carry: ``listeners[i]`` or the shortcut (``tls_port``).

    The order is the one ``start_listeners`` binds in: ``listeners`` first,
    then ``tls_port``, ``ws_port`` and ``wss_port``.
    """
    out: list[tuple[str, Listener]] = []
    for i, listener in enumerate(config.listeners):
        out.append((f"listeners[{i}]", _resolve(config, listener)))
    for name, kind in (("tls_port", "tls"), ("ws_port", "ws"), ("wss_port", "wss")):
        port = getattr(config, name)
        if port is not None:
            out.append((name, _resolve(config, Listener(kind, port))))
    return out


def _resolve(config: Config, listener: Listener) -> Listener:
    def pick(own: object, default: object) -> object:
        return default if own is None else own

    return Listener(
        type=listener.type,
        port=listener.port,
        host=str(pick(listener.host, config.host)),
        certfile=pick(listener.certfile, config.certfile),  # type: ignore[arg-type]
        keyfile=pick(listener.keyfile, config.keyfile),  # type: ignore[arg-type]
        cafile=pick(listener.cafile, config.cafile),  # type: ignore[arg-type]
        require_client_cert=bool(pick(listener.require_client_cert, config.require_client_cert)),
        ciphers=listener.ciphers,
        path=listener.path,
        allowed_origins=listener.allowed_origins,
        proxy_protocol=listener.proxy_protocol,
        max_connections=listener.max_connections,
    )


def listener_setting(label: str, name: str) -> str:
    """How an error names ``name`` of the listener ``label``: ``listeners[1].certfile``,
    or just ``certfile`` for the shortcuts, which use the top-level files."""
    return f"{label}.{name}" if label.startswith("listeners[") else name


def _check_listener_files(label: str, listener: Listener) -> None:
    if listener.type not in ("tls", "wss"):
        return
    if not listener.certfile:
        by = f"a {listener.type} listener" if label.startswith("listeners[") else label
        raise ConfigError(listener_setting(label, "certfile"), f"required by {by}")
    for name in ("certfile", "keyfile", "cafile"):
        path = getattr(listener, name)
        if path and not os.path.isfile(path):
            raise ConfigError(listener_setting(label, name), f"file not found: {path}")
    if listener.require_client_cert and not listener.cafile:
        raise ConfigError(
            listener_setting(label, "require_client_cert"),
            "needs a cafile to verify client certificates against",
        )


# -- loading --------------------------------------------------------------------


def env_var(name: str) -> str:
    """The environment variable that sets field ``name``: ``SHARDMQ_<NAME>``."""
    return ENV_PREFIX + name.upper()


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_setting(name: str, text: str) -> object:
    """Parse the string ``text`` by the type of field ``name``.

    Booleans take 1/0, true/false, yes/no, on/off (any case); optional fields
    take an empty string or "none" for None. Range checks are left to ``Config``.
    """
    base, optional = FIELD_TYPES[name]
    stripped = text.strip()
    if optional and stripped.lower() in ("", "none"):
        return None
    if name == "workers" and stripped.lower() == "auto":
        return "auto"  # resolved by load_config
    try:
        if base is bool:
            if stripped.lower() in _TRUE:
                return True
            if stripped.lower() in _FALSE:
                return False
            raise ValueError(text)
        if base is int:
            return int(stripped, 10)
        if base is float:
            return float(stripped)
        if base is tuple:
            # a TOML inline array: '[{type = "ws", port = 8080}]'
            return tomllib.loads(f"v = {stripped}")["v"]
    except (ValueError, tomllib.TOMLDecodeError):
        raise ConfigError(name, f"expected {_describe(base, optional)}, got {text!r}") from None
    return text


def settings_from_env(env: Mapping[str, str]) -> dict[str, object]:
    """The settings given as ``SHARDMQ_<FIELD>`` variables in ``env``, parsed."""
    settings: dict[str, object] = {}
    for name in FIELD_TYPES:
        var = env_var(name)
        if var in env:
            try:
                settings[name] = parse_setting(name, env[var])
            except ConfigError as exc:
                raise _with_origin(exc, var) from None
    return settings


def read_config_file(path: str | os.PathLike[str]) -> dict[str, object]:
    """The settings in the TOML file at ``path``: top-level keys, field names."""
    where = os.fspath(path)
    try:
        with open(where, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError("config", f"{where}: no such file") from None
    except OSError as exc:
        raise ConfigError("config", f"{where}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("config", f"{where}: not valid UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{where}: invalid TOML: {_one_line(exc)}") from None
    for key in data:
        if key not in FIELD_TYPES:
            raise _unknown_setting(key, f"in {where}")
    return dict(data)


#: Settings a SIGHUP applies to a running broker (``reload_config``): each is
#: read where it is used (limits per client are applied to established
#: connections from their next packet on). Every other setting needs a restart.
LIVE_SETTINGS = frozenset(
    {
        "log_level",
        "admin_token",
        "max_subscriptions",
        "max_outgoing_buffer",
        "max_connections",
        "connection_rate",
        "publish_rate",
        "publish_byte_rate",
        "publish_rate_action",
    }
)


def reload_config(
    old: Config,
    flags: Mapping[str, object] | None,
    config_file: str | os.PathLike[str] | None,
) -> tuple[Config, list[str], list[str]]:
    """Read the settings again as ``load_config`` did (flags and environment
    still win over the file): the new config, with the live settings changed
    and the others as they were; the live settings that changed; and the
    others that changed, which need a restart. Raises ``ConfigError`` (the
    old settings stay) when the file or a value is bad."""
    new = load_config(flags, config_file)
    changed = [f.name for f in fields(Config) if getattr(new, f.name) != getattr(old, f.name)]
    live = [name for name in changed if name in LIVE_SETTINGS]
    restart = [name for name in changed if name not in LIVE_SETTINGS]
    if not live:
        return old, [], restart
    return replace(old, **{name: getattr(new, name) for name in live}), live, restart


def load_config(
    flags: Mapping[str, object] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build a ``Config`` from flags > environment > TOML file > defaults.

    ``flags`` maps field names to values already typed (the CLI passes only
    the flags the user gave). ``env`` defaults to ``os.environ``; when
    ``config_file`` is None the file named by ``SHARDMQ_CONFIG``, if any, is
    read. Raises ``ConfigError`` naming the setting and the value's source.
    """
    if env is None:
        env = os.environ
    if config_file is None:
        config_file = env.get(CONFIG_FILE_ENV) or None

    values: dict[str, object] = {}
    origins: dict[str, str] = {}
    if config_file is not None:
        for name, value in read_config_file(config_file).items():
            values[name] = value
            origins[name] = os.fspath(config_file)
    for name, value in settings_from_env(env).items():
        values[name] = value
        origins[name] = env_var(name)
    for name, value in (flags or {}).items():
        if name not in FIELD_TYPES:
            raise _unknown_setting(name, "given as a flag")
        values[name] = value
        origins[name] = "--" + name.replace("_", "-")

    # "auto" workers (from any source) is one per usable CPU; Config keeps an int.
    workers = values.get("workers")
    if isinstance(workers, str) and workers.strip().lower() == "auto":
        values["workers"] = resolve_workers("auto")
    try:
        config = Config(**values)  # type: ignore[arg-type]  # checked by __post_init__
    except ConfigError as exc:
        origin = origins.get(exc.setting) or origins.get(exc.setting.partition("[")[0])
        raise (_with_origin(exc, origin) if origin else exc) from None
    if config.cluster and "redis_url" not in values:
        # the default (a Redis on 127.0.0.1) would give each host a Redis of
        # its own: several brokers that each believe they are the cluster
        raise _with_origin(
            ConfigError("redis_url", "must be given with cluster: the Redis every node shares"),
            origins["cluster"],
        )
    return config


def _with_origin(exc: ConfigError, origin: str) -> ConfigError:
    message = str(exc).partition(": ")[2]
    return ConfigError(exc.setting, f"{message} (from {origin})")


def _unknown_setting(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, FIELD_TYPES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(key, f"unknown setting {where}{hint}")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
