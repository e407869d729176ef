"""The body of one worker process of a multi-worker broker.

The supervisor forks a process per worker and calls :func:`run_worker` in it
with the worker's inherited listening sockets. The worker runs a uvloop event
loop with one shard, linked to the other workers' shards by the local fabric,
and heartbeats from inside that loop (a stuck loop stops the heartbeat and the
supervisor replaces the worker).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from ..config import Config
from ..errors import ConfigError

log = logging.getLogger("shardmq.worker")

HEARTBEAT_INTERVAL = 1.0


def run_worker(
    ctx: Any,
    config: Config,
    node_token: str | None = None,
    metrics_sock: Any = None,
    reload_source: tuple[dict[str, object], str | None] | None = None,
) -> int:
    """Run worker ``ctx.worker_id`` until SIGTERM/SIGINT; returns its exit code.
    ``node_token``: with ``cluster``, the node's heartbeat token (every worker
    refreshes the heartbeat with it, ``cluster/nodes.py``)."""
    import uvloop

    from ..broker import Broker, load_app
    from ..cluster.local import LocalFabric
    from ..supervisor.arbiter import EXIT_CONFIG

    _name_worker_in_logs(ctx.worker_id)
    broker = Broker(config)
    broker.reload_source = reload_source
    broker.worker_id = ctx.worker_id
    broker.generation = ctx.generation
    if metrics_sock is not None:
        if ctx.worker_id == 0:
            broker.metrics_sock = metrics_sock
        else:
            metrics_sock.close()  # worker 0 serves the broker's one HTTP port
    if config.cluster:
        from ..cluster.node_fabric import ClusterLocalFabric, node_link

        link = node_link(config, ctx.worker_id, ctx.workers, node_token)
        broker.fabric = ClusterLocalFabric(link, ctx.worker_id, ctx.workers, ctx.run_dir)
    else:
        broker.fabric = LocalFabric(ctx.worker_id, ctx.workers, ctx.run_dir)
    try:
        if config.app:
            load_app(broker, config.app)
    except ConfigError as exc:
        log.error("worker %d: %s", ctx.worker_id, exc)
        return int(EXIT_CONFIG)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        listener_sockets = dict(enumerate(ctx.sockets[1:]))
        try:
            await broker.start(sock=ctx.sockets[0], listener_sockets=listener_sockets)
        except ConfigError as exc:
            log.error("worker %d: %s", ctx.worker_id, exc)
            raise SystemExit(int(EXIT_CONFIG)) from None
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if hasattr(broker, "reload"):
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(broker.reload()))

        def beat() -> None:
            ctx.heartbeat()
            loop.call_later(HEARTBEAT_INTERVAL, beat)

        beat()
        log.info("worker %d serving (generation %d)", ctx.worker_id, ctx.generation)
        await stop.wait()
        await broker.stop()

    uvloop.run(main())
    return 0


def _name_worker_in_logs(worker_id: int) -> None:
    """Prefix every log record of this process with the worker id, and set
    it as the record's ``worker`` (the ``worker`` field of ``log_format = "json"``,
    which drops the prefix again: ``shardmq/logformat.py``)."""
    factory = logging.getLogRecordFactory()

    def record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        rec = factory(*args, **kwargs)
        rec.msg = f"[w{worker_id}] {rec.msg}"
        rec.__dict__["worker"] = worker_id
        return rec

    logging.setLogRecordFactory(record)
