"""The ``shardmq`` command.

``shardmq serve`` loads the settings (flags > ``SHARDMQ_*`` environment >
TOML file > defaults, see ``shardmq.config``), sets up logging and runs the
broker until SIGINT or SIGTERM. Only the flags the user actually typed are
passed on, so a click default never hides an environment variable or a file
value. A bad setting is one line on stderr and exit status 2.

``shardmq passwd`` manages a Mosquitto password file as ``mosquitto_passwd``
does (same options, same file format); its errors are one line on stderr
and exit status 1, as mosquitto_passwd's.

``shardmq ctl`` asks a running broker through its admin API (``shardmq.ctl``).
"""

from __future__ import annotations

import logging
from typing import NoReturn

import click
from click.core import ParameterSource

from . import __version__
from .auth.passwd import PasswordFile, check_username
from .config import LOG_LEVELS, Config, env_var, load_config
from .errors import ConfigError
from .logformat import TEXT_FORMAT, formatter

#: Exit status for a configuration error (the same as click's usage errors).
EXIT_CONFIG_ERROR = 2
#: Exit status of ``shardmq passwd`` when it fails (mosquitto_passwd's).
EXIT_PASSWD_ERROR = 1

LOG_FORMAT = TEXT_FORMAT

_DEFAULTS = Config()


def _help(setting: str, text: str, shown_default: str | None = None) -> str:
    """Help text that shows the setting's real default and its variable."""
    default = getattr(_DEFAULTS, setting)
    if shown_default is not None:
        shown = shown_default
    elif isinstance(default, bool):
        shown = "on" if default else "off"
    elif isinstance(default, float) and default.is_integer():
        shown = str(int(default))
    else:
        shown = str(default)
    return f"{text} [default: {shown}] [env: {env_var(setting)}]"


class _Workers(click.ParamType):
    """``--workers``: a number, or ``auto`` (resolved by ``load_config``)."""

    name = "auto|N"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int | str:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return text
        try:
            return int(text, 10)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor 'auto'", param, ctx)


WORKERS = _Workers()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, "-V", "--version", prog_name="shardmq", message="%(prog)s %(version)s"
)
def main() -> None:
    """shardmq: a shard-per-core MQTT 5.0 / 3.1.1 broker."""


@main.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML file of settings (top-level keys are setting names). [env: SHARDMQ_CONFIG]",
)
@click.option("--host", default=None, help=_help("host", "Address to listen on."))
@click.option(
    "--port",
    type=int,
    default=None,
    help=_help("port", "TCP port; 0 picks a free one."),
)
@click.option(
    "--workers",
    type=WORKERS,
    default=None,
    metavar="auto|N",
    help=_help("workers", "Worker processes, one shard each; auto is one per CPU."),
)
@click.option(
    "--pin/--no-pin",
    default=None,
    help=_help("pin", "Pin each worker to its own CPU."),
)
@click.option(
    "--app",
    default=None,
    metavar="MODULE:ATTR",
    help=_help("app", "A Broker, or a function(broker) that registers hooks."),
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default=None,
    help=_help("log_level", "Logging threshold."),
)
@click.option(
    "--log-format",
    default=None,
    metavar="text|json",
    help=_help("log_format", "Log lines as text or as one JSON object per line."),
)
@click.option(
    "--log-connections/--no-log-connections",
    default=None,
    help=_help("log_connections", "Log each connect and disconnect (with its reason) at info."),
)
@click.option(
    "--max-connections",
    type=int,
    default=None,
    help=_help("max_connections", "Connections accepted at once; 0 is unlimited."),
)
@click.option(
    "--connect-timeout",
    type=float,
    default=None,
    help=_help("connect_timeout", "Seconds a new connection has to send CONNECT."),
)
@click.option(
    "--max-packet-size",
    type=int,
    default=None,
    help=_help("max_packet_size", "Largest packet accepted, in bytes."),
)
@click.option(
    "--max-queued-messages",
    type=int,
    default=None,
    help=_help("max_queued_messages", "Messages queued per session."),
)
@click.option(
    "--sys-interval",
    type=float,
    default=None,
    help=_help("sys_interval", "Seconds between $SYS updates; 0 disables."),
)
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help=_help("metrics_port", "HTTP port of /metrics, /healthz and /readyz; none is off."),
)
@click.option(
    "--metrics-host",
    default=None,
    help=_help("metrics_host", "Address of the metrics port; none is --host."),
)
@click.option(
    "--store",
    default=None,
    help=_help("store", "Where sessions and retained messages live: memory or redis."),
)
@click.option(
    "--redis-url",
    default=None,
    help=_help("redis_url", "redis store: redis://[user:password@]host:port/db."),
)
@click.option(
    "--redis-prefix",
    default=None,
    help=_help("redis_prefix", "redis store: prefix of every key."),
)
@click.option(
    "--redis-cluster/--no-redis-cluster",
    default=None,
    help=_help("redis_cluster", "--redis-url names a seed node of a Redis Cluster."),
)
@click.option(
    "--redis-connect-timeout",
    type=float,
    default=None,
    help=_help("redis_connect_timeout", "Seconds to keep trying Redis at start."),
)
@click.option(
    "--redis-backlog-limit",
    type=int,
    default=None,
    help=_help("redis_backlog_limit", "Bytes of changes kept while Redis is down."),
)
@click.option(
    "--store-timeout",
    type=float,
    default=None,
    help=_help("store_timeout", "Seconds an acknowledgement waits for the store before 0x80."),
)
@click.option(
    "--cluster/--no-cluster",
    default=None,
    help=_help("cluster", "Join the other nodes on the same Redis and prefix as one broker."),
)
@click.option(
    "--node-id",
    default=None,
    help=_help("node_id", "This node's name in the cluster; none is <hostname>:<port>."),
)
@click.option(
    "--node-timeout",
    type=float,
    default=None,
    help=_help("node_timeout", "Seconds of silence after which a node counts as dead."),
)
@click.option(
    "--persistence-file",
    default=None,
    help=_help("persistence_file", "memory store: snapshot file, loaded at start."),
)
@click.option(
    "--autosave-interval",
    type=float,
    default=None,
    help=_help("autosave_interval", "Seconds between snapshots; 0: only at shutdown."),
)
@click.option(
    "--allow-anonymous/--no-allow-anonymous",
    default=None,
    help=_help(
        "allow_anonymous",
        "Accept clients without credentials.",
        "on, unless --password-file or --auth-redis",
    ),
)
@click.option(
    "--password-file",
    default=None,
    help=_help("password_file", "Mosquitto password file (see shardmq passwd)."),
)
@click.option(
    "--acl-file",
    default=None,
    help=_help("acl_file", "Mosquitto ACL file: topic, user and pattern lines."),
)
@click.option(
    "--auth-redis/--no-auth-redis",
    default=None,
    help=_help("auth_redis", "Credentials and ACLs from Redis at --redis-url (EMQX layout)."),
)
@click.option("--tls-port", type=int, default=None, help=_help("tls_port", "MQTT over TLS port."))
@click.option(
    "--ws-port", type=int, default=None, help=_help("ws_port", "MQTT over WebSocket port (/mqtt).")
)
@click.option(
    "--wss-port",
    type=int,
    default=None,
    help=_help("wss_port", "MQTT over WebSocket over TLS port (/mqtt)."),
)
@click.option("--certfile", default=None, help=_help("certfile", "Server certificate chain, PEM."))
@click.option("--keyfile", default=None, help=_help("keyfile", "Server private key, PEM."))
@click.option(
    "--cafile", default=None, help=_help("cafile", "CA certificates for client certificates, PEM.")
)
@click.option(
    "--require-client-cert/--no-require-client-cert",
    default=None,
    help=_help("require_client_cert", "Refuse TLS clients without a valid certificate."),
)
@click.option(
    "--use-identity-as-username/--no-use-identity-as-username",
    default=None,
    help=_help("use_identity_as_username", "Client certificate CN becomes the username."),
)
@click.pass_context
def serve(ctx: click.Context, /, config_file: str | None, **options: object) -> None:
    """Run the broker until SIGINT or SIGTERM."""
    flags = {
        name: value
        for name, value in options.items()
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }
    try:
        config = load_config(flags, config_file=config_file)
    except ConfigError as exc:
        _fail(ctx, exc)

    handler = logging.StreamHandler()  # stderr, as basicConfig's
    handler.setFormatter(formatter(config.log_format))
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler])

    # Imported here so that `--help`, `--version` and config errors stay fast
    # and do not load the event loop machinery.
    from .broker import serve as run_broker

    try:
        run_broker(config, (flags, config_file))
    except ConfigError as exc:  # e.g. an --app that cannot be imported
        _fail(ctx, exc)


def _fail(ctx: click.Context, exc: ConfigError) -> NoReturn:
    message = " ".join(str(exc).split())
    click.echo(f"shardmq: error: {message}", err=True)
    ctx.exit(EXIT_CONFIG_ERROR)


@main.command()
@click.option("-c", "create", is_flag=True, help="Create a new file; overwrites an existing one.")
@click.option("-b", "batch", is_flag=True, help="Take the password from the command line.")
@click.option("-D", "delete", is_flag=True, help="Delete the user instead of setting a password.")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("username")
@click.argument("password", required=False)
@click.pass_context
def passwd(
    ctx: click.Context,
    /,
    create: bool,
    batch: bool,
    delete: bool,
    file: str,
    username: str,
    password: str | None,
) -> None:
    """Add, change or delete a user of a Mosquitto password file.

    \b
    shardmq passwd [-c] FILE USER          prompts for the password twice
    shardmq passwd [-c] -b FILE USER PASS  password on the command line
    shardmq passwd -D FILE USER            deletes USER

    Passwords are stored as mosquitto_passwd stores them ($7$, PBKDF2-SHA512,
    101 iterations), so mosquitto and shardmq read the same file.
    """
    if create and delete:
        _passwd_fail(ctx, "-c and -D cannot be used together")
    if delete and batch:
        _passwd_fail(ctx, "-b and -D cannot be used together")
    if batch and password is None:
        _passwd_fail(ctx, "-b needs the password after FILE and USER")
    if not batch and password is not None:
        _passwd_fail(ctx, "a password on the command line needs -b")
    try:
        check_username(username)
    except ValueError as exc:
        _passwd_fail(ctx, str(exc))
    try:
        entries = PasswordFile() if create else PasswordFile.load(file)
    except ConfigError as exc:
        _passwd_fail(ctx, str(exc).partition(": ")[2])  # the file and line, not the setting
    if delete:
        try:
            entries.delete(username)
        except KeyError:
            _passwd_fail(ctx, f"user {username!r} is not in {file}")
    else:
        if password is None:
            password = click.prompt(
                "Password", hide_input=True, confirmation_prompt="Reenter password"
            )
            assert password is not None
        entries.set(username, password)
    try:
        entries.save(file)
    except OSError as exc:
        _passwd_fail(ctx, f"cannot write {file}: {exc.strerror}")


def _passwd_fail(ctx: click.Context, message: str) -> NoReturn:
    click.echo(f"shardmq passwd: error: {' '.join(message.split())}", err=True)
    ctx.exit(EXIT_PASSWD_ERROR)


def _add_ctl() -> None:
    from .ctl import ctl

    main.add_command(ctl)


_add_ctl()
