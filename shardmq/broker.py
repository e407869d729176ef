"""The public API: configure, embed and run a broker, register hooks.

::

    from shardmq import Broker

    broker = Broker(port=1883)

    @broker.on_connect
    async def check(client, packet):
        return packet.username == "alice" and packet.password == b"secret"

    broker.run()                 # or: await broker.start() ... await broker.stop()

Hooks receive ``(client, packet)``; ``client.broker`` is this object, whose
methods (:meth:`Broker.publish`, :attr:`Broker.retained`,
:meth:`Broker.disconnect`) are safe to call from a hook.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import signal
import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any

from .config import Config, effective_listeners, reload_config
from .errors import ConfigError
from .hooks import HOOK_NAMES, ClientHandle, Hook, Hooks
from .protocol.constants import ReasonCode
from .protocol.packets import Properties
from .protocol.session import Message
from .protocol.topics import is_valid_topic_filter, validate_topic_name
from .storage.snapshot import SnapshotError, read_snapshot, worker_path, write_snapshot
from .worker.connection import Connection
from .worker.listeners import start_listeners, tls_contexts
from .worker.shard import Shard

log = logging.getLogger("shardmq")


class RetainedMessage:
    """A retained message as the hooks API shows it."""

    __slots__ = ("topic", "payload", "qos", "properties", "ttl")

    def __init__(
        self, topic: str, payload: bytes, qos: int, properties: Properties | None, ttl: int | None
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.properties = properties
        #: seconds left before it expires, None when it never does
        self.ttl = ttl

    def __repr__(self) -> str:
        return f"RetainedMessage({self.topic!r}, {self.payload!r}, qos={self.qos}, ttl={self.ttl})"


class RetainedAPI:
    """The broker's retained store: add, get, delete and walk with a wildcard filter."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def _shard(self) -> Shard:
        shard = self._broker._shard
        if shard is None:
            raise RuntimeError("the broker is not running")
        return shard

    def add(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        ttl: int | None = None,
        properties: Properties | None = None,
    ) -> None:
        """Store a retained message (``ttl`` seconds, or forever), without publishing it."""
        validate_topic_name(topic)
        shard = self._shard()
        props = properties.copy() if properties is not None else Properties()
        if ttl is not None:
            props.message_expiry_interval = ttl
        expiry_at = shard.clock() + ttl if ttl is not None else None
        msg = Message(topic, bytes(payload), qos, True, props, expiry_at, None)
        shard.set_retained(topic, msg if payload else None)

    def get(self, topic: str) -> RetainedMessage | None:
        shard = self._shard()
        msg = shard.retained.get(topic)
        if msg is None:
            return None
        now = shard.clock()
        if msg.expiry_at is not None and msg.expiry_at <= now:
            shard.retained.delete(topic)
            return None
        return self._view(msg, now)

    def delete(self, topic: str) -> bool:
        """Clear ``topic``'s retained message on every worker (and node);
        whether this worker held one."""
        shard = self._shard()
        held = shard.retained.get(topic) is not None
        shard.set_retained(topic, None)
        return held

    def for_each(self, topic_filter: str = "#") -> Iterator[RetainedMessage]:
        """Every live retained message whose topic matches ``topic_filter``."""
        if not is_valid_topic_filter(topic_filter):
            raise ValueError(f"invalid topic filter {topic_filter!r}")
        shard = self._shard()
        now = shard.clock()
        for msg in shard.retained_messages(topic_filter):
            yield self._view(msg, now)

    @staticmethod
    def _view(msg: Message, now: float) -> RetainedMessage:
        ttl = None
        if msg.expiry_at is not None:
            ttl = max(0, int(msg.expiry_at - now + 0.999))
        return RetainedMessage(msg.topic, msg.payload, msg.qos, msg.properties, ttl)

    def __len__(self) -> int:
        return len(self._shard().retained)


class Broker:
    """An MQTT broker: one shard served by one asyncio event loop."""

    def __init__(self, config: Config | None = None, **settings: Any) -> None:
        if settings:
            unknown = set(settings) - {f.name for f in dataclasses.fields(Config)}
            if unknown:
                name = sorted(unknown)[0]
                raise ConfigError(name, "unknown setting")
        if config is None:
            # built from the settings, not replace()d onto Config(): an unset
            # allow_anonymous must be resolved against this password_file
            config = Config(**settings)
        elif settings:
            config = dataclasses.replace(config, **settings)
        self.config = config
        #: what ``shardmq serve`` read its settings from (flags, config
        #: file), read again on SIGHUP; None: an embedded broker's own config
        self.reload_source: tuple[dict[str, object], str | None] | None = None
        self.hooks = Hooks()
        self.retained = RetainedAPI(self)
        self._shard: Shard | None = None
        self._server: asyncio.AbstractServer | None = None
        #: servers of the extra listeners (TLS, WebSocket...), in config order
        self.listener_servers: list[asyncio.AbstractServer] = []
        self._tls_contexts: dict[int, Any] = {}
        self._stopped: asyncio.Event | None = None
        #: set by the worker process of a multi-worker broker
        self.worker_id = 0
        self.fabric: Any = None
        #: how many times the supervisor has started this worker (1: the first;
        #: 0: no supervisor). A snapshot is only loaded by a broker's first
        #: start, not by a worker restarted after a crash while the others
        #: kept serving
        self.generation = 0
        self._snapshot_path: str | None = None
        self._autosave: asyncio.TimerHandle | None = None
        #: the operating HTTP port's socket, bound by the supervisor (worker 0)
        self.metrics_sock: socket.socket | None = None
        #: the operating HTTP port (/metrics ...), when this broker serves it
        self.ops: Any = None
        for name in HOOK_NAMES:
            setattr(self, name, self._decorator(name))

    # -- hooks -------------------------------------------------------------------

    def _decorator(self, name: str) -> Any:
        def register(fn: Hook) -> Hook:
            return self.hooks.register(name, fn)

        register.__name__ = name
        register.__doc__ = f"Register ``fn`` as the {name} hook (usable as a decorator)."
        return register

    def add_hook(self, name: str, fn: Hook) -> Hook:
        """Register a hook by name (``"on_publish"`` ...)."""
        return self.hooks.register(name, fn)

    # -- lifecycle -------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the broker listens on (useful with ``port=0``)."""
        if self._server is None:
            raise RuntimeError("the broker is not running")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(
        self,
        sock: socket.socket | None = None,
        listener_sockets: Mapping[int, socket.socket] | None = None,
    ) -> None:
        """Start listening in the running event loop (``listener_sockets``:
        pre-bound sockets of the extra listeners, by listener index)."""
        loop = asyncio.get_running_loop()
        fabric = self.fabric
        if fabric is None and self.config.cluster:
            # one process, one node: the cluster layer over no other shard
            from .cluster.node_fabric import ClusterFabric, node_link

            fabric = ClusterFabric(node_link(self.config))
        shard = Shard(
            self.config, self.hooks, loop, broker=self, shard_id=self.worker_id, fabric=fabric
        )
        self._shard = shard
        self._stopped = asyncio.Event()
        cfg = self.config
        if shard.access is not None:
            shard.access.start(lambda: shard.clock())
        if cfg.store == "redis":
            await self._open_store(shard)
        elif cfg.persistence_file:
            self._open_snapshot(shard)
        if shard.fabric.distributed:
            # link up with the other workers (and nodes) before taking clients
            try:
                await shard.fabric.start()
            except BaseException:
                self._shard = None
                if shard.store is not None:
                    await shard.store.close()
                await shard.fabric.stop()
                raise
        if sock is not None:
            self._server = await loop.create_server(
                lambda: Connection(shard), sock=sock, backlog=4096
            )
        else:
            try:
                self._server = await loop.create_server(
                    lambda: Connection(shard), cfg.host, cfg.port, backlog=4096, reuse_address=True
                )
            except OSError as exc:
                self._shard = None
                raise ConfigError(
                    "port", f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}"
                ) from None
        try:
            self._tls_contexts = tls_contexts(cfg)
            self.listener_servers = await start_listeners(
                loop,
                cfg,
                lambda: Connection(shard),
                listener_sockets,
                contexts=self._tls_contexts,
            )
        except BaseException:
            self._server.close()
            self._server = None
            self._shard = None
            raise
        shard.start_sys()
        self._answer_admin(shard)
        if cfg.metrics_port is not None:
            await self._start_ops(shard)
        log.info("shardmq listening on %s:%d", cfg.host, self.port)

    @staticmethod
    def _answer_admin(shard: Shard) -> None:
        """Every worker answers the admin API's questions about its own clients,
        over the links between workers and, in a cluster, from other nodes
        (which may serve the API where this node does not)."""
        from .worker import admin

        def answer(op: str, args: dict[str, Any]) -> Any:
            return admin.local(shard, op, args)

        fabric: Any = shard.fabric
        if hasattr(fabric, "admin_source"):
            fabric.admin_source = answer
        link = getattr(fabric, "link", None)
        if link is not None:
            link.admin_source = answer

    async def _start_ops(self, shard: Shard) -> None:
        """metrics_port: every worker answers for its figures over the fabric;
        worker 0 serves the HTTP port for the whole broker."""
        from .worker.http import OpsServer
        from .worker.metrics import LatencyProbe, worker_figures

        probe = LatencyProbe(shard)
        fabric = shard.fabric
        if hasattr(fabric, "figures_source"):
            fabric.figures_source = lambda: worker_figures(shard, probe)
        if self.worker_id != 0:
            return
        cfg = self.config
        ops = OpsServer(shard, probe)
        host = cfg.metrics_host if cfg.metrics_host is not None else cfg.host
        try:
            await ops.start(self.metrics_sock, host, cfg.metrics_port or 0)
        except OSError as exc:
            raise ConfigError(
                "metrics_port",
                f"cannot listen on {host}:{cfg.metrics_port}: {exc.strerror or exc}",
            ) from None
        self.ops = ops
        log.info("metrics, health and status page on http://%s:%d/", host, ops.port)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, send v5 clients DISCONNECT 0x8B, close every connection."""
        shard = self._shard
        if shard is None:
            return
        shard.closing = True
        if self.ops is not None:
            await self.ops.stop()
            self.ops = None
        if self._server is not None:
            self._server.close()
        for server in self.listener_servers:
            server.close()
        for conn in list(shard.connections):
            conn.shutdown()
        shard.flush()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while shard.connections and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(shard.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._snapshot_path is not None:
            if self._autosave is not None:
                self._autosave.cancel()
                self._autosave = None
            self._save_snapshot(shard)
        if shard.store is not None:
            await shard.store.close()
        if self._server is not None:
            await self._server.wait_closed()
        for server in self.listener_servers:
            await server.wait_closed()
        self.listener_servers = []
        shard.stop()
        await shard.fabric.stop()
        if shard.access is not None:
            await shard.access.stop()
        self._shard = None
        if self._stopped is not None:
            self._stopped.set()
        log.info("shardmq stopped")

    # -- the redis store --------------------------------------------------------------

    async def _open_store(self, shard: Shard) -> None:
        # imported here: a broker without Redis does not load redis-py
        from .cluster.nodes import node_id_of
        from .storage.base import StoreUnavailable
        from .storage.redis import RedisStore

        cfg = self.config
        store = RedisStore(
            cfg.redis_url,
            prefix=cfg.redis_prefix,
            shard_id=shard.shard_id,
            workers=shard.fabric.workers if shard.fabric.distributed else 1,
            connect_timeout=cfg.redis_connect_timeout,
            store_timeout=cfg.store_timeout,
            backlog_limit=cfg.redis_backlog_limit,
            node=node_id_of(cfg) if cfg.cluster else None,
            cluster=cfg.redis_cluster,
        )
        try:
            await store.open()
            state = await store.load()
        except StoreUnavailable as exc:
            if self.generation <= 1:
                self._shard = None
                await store.close()
                raise ConfigError("redis_url", str(exc)) from None
            # a worker restarted while Redis is away: the others serve on, and
            # so does this one (its share of new connections must not wait),
            # refusing persistent sessions until Redis answers and its
            # sessions are loaded
            log.error("%s; serving without stored sessions until it answers", exc)
            state = None
            store.open_later(lambda loaded: shard.restore(loaded, from_store=True))
        shard.store = store
        store.resync = shard.resync_store
        if shard.fabric.distributed:
            # a QoS 1/2 message stored on another worker is acknowledged once it is
            shard.fabric.store_sync = True
            shard.fabric.sync_timeout = cfg.store_timeout
        if state is not None:
            shard.restore(state, from_store=True)

    # -- the memory store's snapshot (persistence_file) ---------------------------------

    def _open_snapshot(self, shard: Shard) -> None:
        cfg = self.config
        assert cfg.persistence_file is not None
        workers = shard.fabric.workers if shard.fabric.distributed else 1
        path = worker_path(cfg.persistence_file, shard.shard_id, workers)
        self._snapshot_path = path
        if self.generation <= 1:
            try:
                state = read_snapshot(path)
            except SnapshotError as exc:
                self._shard = None
                raise ConfigError("persistence_file", str(exc)) from None
            if state is not None:
                shard.restore(state)
        else:
            log.warning(
                "worker restarted: its sessions since %s was written are not restored", path
            )
        if cfg.autosave_interval > 0:
            self._autosave = shard.loop.call_later(cfg.autosave_interval, self._autosave_due)

    def _autosave_due(self) -> None:
        shard = self._shard
        if shard is None:
            return
        self._save_snapshot(shard)
        self._autosave = shard.loop.call_later(self.config.autosave_interval, self._autosave_due)

    def _save_snapshot(self, shard: Shard) -> None:
        path = self._snapshot_path
        assert path is not None
        started = time.monotonic()
        try:
            size = write_snapshot(
                path,
                list(shard.sessions.values()),
                [msg for _topic, msg in shard.retained.items()],
                shard.shard_id,
                shard.clock(),
            )
        except OSError as exc:
            log.error("snapshot %s not written: %s", path, exc.strerror or exc)
            return
        log.info(
            "snapshot %s: %d sessions, %d retained, %d bytes in %.3f s",
            path,
            len(shard.sessions),
            len(shard.retained),
            size,
            time.monotonic() - started,
        )

    async def serve_forever(self) -> None:
        """Start, then run until SIGINT/SIGTERM, then stop gracefully.

        SIGHUP re-reads the TLS certificates and the password and ACL files
        (:meth:`reload`).
        """
        loop = asyncio.get_running_loop()
        # installed first, so that a SIGHUP sent once the broker is listening
        # never meets the default action (exit); runs in the loop, not in the
        # signal handler: the task does the work
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        await self.start()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
        await self.stop()

    async def reload(self) -> bool:
        """SIGHUP: the settings (:meth:`reload_settings`, when the broker was
        started from flags and a config file), the TLS certificates
        (:meth:`reload_tls`) and the access files (:meth:`reload_access`);
        True when everything reloaded."""
        settings = self.reload_settings()
        tls = await self.reload_tls()
        return self.reload_access() and tls and settings

    def reload_settings(self) -> bool:
        """Read the settings again from ``reload_source`` (the flags and the
        config file ``shardmq serve`` was given): the live ones
        (``config.LIVE_SETTINGS``) apply from now on, to established
        connections too; any other that changed is logged as needing a
        restart. A bad file or value is logged in one line naming the setting
        and the previous settings stay. False in that case."""
        if self.reload_source is None:
            return True
        flags, config_file = self.reload_source
        try:
            config, live, restart = reload_config(self.config, flags, config_file)
        except ConfigError as exc:
            log.error("config reload: %s; the previous settings stay", " ".join(str(exc).split()))
            return False
        if restart:
            log.warning("config reload: %s changed: needs a restart", ", ".join(restart))
        if live:
            self._apply_settings(config)
        log.info("config reloaded%s", f": {', '.join(live)} changed" if live else "")
        return True

    def _apply_settings(self, config: Config) -> None:
        old, self.config = self.config, config
        if config.log_level != old.log_level:
            logging.getLogger().setLevel(config.log_level.upper())
        shard = self._shard
        if shard is None:
            return
        shard.config = config
        if config.connection_rate != old.connection_rate:
            shard.connection_buckets.clear()  # new buckets at the new rate
        if (config.publish_rate, config.publish_byte_rate) != (
            old.publish_rate,
            old.publish_byte_rate,
        ):
            for conn in shard.connections:
                conn.rate_changed()

    def reload_access(self) -> bool:
        """Re-read the password and ACL files; every open connection is held
        to the new rules from its next packet on. A file that fails to parse
        is logged (file and line) and the previous rules stay in force."""
        shard = self._shard
        if shard is None or shard.access is None:
            return True
        access = shard.access
        ok = access.reload()
        if ok:
            if access.acl is not None:
                for conn in list(shard.connections):
                    if conn.session is not None:
                        conn.set_rules(access.rules_for(conn.username, conn.client_id))
            log.info("password and ACL files reloaded")
        return ok

    async def reload_tls(self) -> bool:
        """Re-read every TLS listener's certificate files (SIGHUP).

        New connections use the new certificates; established ones keep
        theirs. A listener whose files do not load keeps its old ones (logged).
        Returns True when every listener reloaded.
        """
        ok = True
        for context in self._tls_contexts.values():
            ok = context.reload() and ok
        if self._tls_contexts:
            log.info("TLS certificates reloaded%s", "" if ok else " (with errors)")
        return ok

    def run(self) -> None:
        """Run the broker on uvloop until SIGINT/SIGTERM."""
        import uvloop

        uvloop.run(self.serve_forever())

    # -- API for hooks and embedding -----------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> int:
        """Publish from the server side; returns the number of matching subscriptions."""
        shard = self._shard
        if shard is None:
            raise RuntimeError("the broker is not running")
        validate_topic_name(topic)
        if isinstance(payload, str):
            payload = payload.encode()
        return shard.publish_as_server(topic, bytes(payload), qos, retain, properties)

    def disconnect(
        self,
        client_id: str,
        reason_code: int = ReasonCode.ADMINISTRATIVE_ACTION,
        reason_string: str | None = None,
    ) -> bool:
        """Disconnect a client (v5 clients get DISCONNECT with ``reason_code``)."""
        from .errors import MQTTError

        shard = self._shard
        if shard is None:
            return False
        session = shard.sessions.get(client_id)
        if session is None or session.connection is None:
            return False
        conn = session.connection
        assert isinstance(conn, Connection)
        conn.fail(MQTTError(reason_code, reason_string))
        return True

    def clients(self) -> list[ClientHandle]:
        """Handles of the connected clients."""
        shard = self._shard
        if shard is None:
            return []
        return [c.handle for c in shard.connections if c.handle is not None]

    @property
    def stats(self) -> Any:
        return self._shard.stats if self._shard is not None else None


def load_app(broker: Broker, spec: str) -> None:
    """Apply ``--app module:attr``: a Broker whose hooks are taken over, or a
    callable that receives the broker and registers hooks on it."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError("app", f"expected module:attr, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError("app", f"cannot import {module_name!r}: {exc}") from None
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise ConfigError("app", f"{module_name!r} has no attribute {attr!r}") from None
    if isinstance(target, Broker):
        for name in HOOK_NAMES:
            fn = getattr(target.hooks, name)
            if fn is not None:
                broker.hooks.register(name, fn)
    elif callable(target):
        target(broker)
    else:
        raise ConfigError("app", f"{spec!r} is neither a Broker nor a callable")


def serve(
    config: Config, reload_source: tuple[dict[str, object], str | None] | None = None
) -> None:
    """Run a broker with ``config`` until SIGINT/SIGTERM (the CLI's ``serve``).

    One worker runs in this process. Several run under a supervisor, one
    process and one shard each, sharing the listening sockets through
    SO_REUSEPORT and linked by the local fabric. With ``cluster`` the node
    joins the others on its Redis (``cluster/node_fabric.py``).
    """
    if config.workers > 1:
        import functools
        import sys

        from .supervisor.arbiter import Supervisor
        from .worker.main import run_worker

        if config.app:
            load_app(Broker(config), config.app)  # fail early, in one line
        node_token = None
        if config.cluster:
            # the node's heartbeat, claimed before any worker exists: a second
            # node under this id is refused here, in one line (cluster/nodes.py)
            from .cluster.nodes import claim_before_fork, new_token

            node_token = new_token()
            claim_before_fork(config, node_token, config.workers)
        metrics_sock = None
        if config.metrics_port is not None:
            # bound here, before the fork, like the MQTT listeners: one socket
            # for the whole broker, served by worker 0 (the others close it)
            host = config.metrics_host if config.metrics_host is not None else config.host
            try:
                metrics_sock = socket.create_server(
                    (host, config.metrics_port), reuse_port=False, backlog=128
                )
            except OSError as exc:
                raise ConfigError(
                    "metrics_port",
                    f"cannot listen on {host}:{config.metrics_port}: {exc.strerror or exc}",
                ) from None
        addresses = [(config.host, config.port)]
        # one socket per listener per worker, in start_listeners' order
        addresses += [(str(lst.host), lst.port) for _, lst in effective_listeners(config)]
        supervisor = Supervisor(
            config.workers,
            addresses,
            functools.partial(
                run_worker,
                config=config,
                node_token=node_token,
                metrics_sock=metrics_sock,
                reload_source=reload_source,
            ),
            pin=config.pin,
            heartbeat_timeout=config.heartbeat_timeout,
            shutdown_timeout=config.shutdown_timeout,
        )
        sys.exit(supervisor.run())
    broker = Broker(config)
    broker.reload_source = reload_source
    if config.app:
        load_app(broker, config.app)
    broker.run()
