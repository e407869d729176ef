"""The fabric of a node in a cluster: this host's shards, plus the other nodes.

A cluster node is the broker it would be alone (one shard with the plain
``Fabric``, or several linked by ``LocalFabric``) with a :class:`NodeLink`
beside it that reaches the other nodes through Redis (``streams.py``).
:class:`NodeFabric` is that composition, written as a layer over either
fabric class: each of its methods does what the host fabric does, through
``super()``, then what the link adds (``forward`` sends to the matching
shards of this host and to the matching nodes; ``barrier`` waits for both).
:class:`ClusterFabric` puts it over ``Fabric`` (``--workers 1``),
:class:`ClusterLocalFabric` over ``LocalFabric`` (``--workers N``).

Why a layer and not an object wrapping a host fabric: the shard reads some
fabric attributes on every publish (``distributed``, ``remote_shared``) and
the connection others (``fence``); as a layer, they stay plain attributes of
one object instead of properties forwarding to another. With ``cluster``
off none of this is loaded and the hot path is what it was; with it on, a
publish costs one more method call and one trie match (the other nodes'
interest).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from ..config import Config
from ..errors import ConfigError
from ..protocol.session import Message, Session
from ..storage.base import all_done
from ..storage.redis import RedisStore
from .fabric import Fabric, SessionState
from .local import LocalFabric
from .nodes import new_token, node_id_of
from .owners import OwnersUnavailable
from .streams import NodeLink


def node_link(
    config: Config, worker: int = 0, workers: int = 1, token: str | None = None
) -> NodeLink:
    """The link of worker ``worker`` of this node (``token``: the node's, drawn by
    the parent of several workers; a single-process node draws its own)."""
    return NodeLink(
        url=config.redis_url,
        prefix=config.redis_prefix,
        node_id=node_id_of(config),
        worker=worker,
        workers=workers,
        token=token or new_token(),
        node_timeout=config.node_timeout,
        store_timeout=config.store_timeout,
        cluster=config.redis_cluster,
    )


class NodeFabric(Fabric):
    """The layer (see the module docstring); ``link`` is set by the subclass."""

    distributed = True
    link: NodeLink
    #: topic -> when its retained message was set (the newest wins everywhere)
    retained_stamps: dict[str, float]
    #: client ids claimed on this node alone (Redis was away): the host fabric's
    host_claims: set[str]

    def _local_barrier(self) -> Awaitable[None] | None:
        return None

    def _local_stored(self) -> asyncio.Future[None] | None:
        return None

    async def start(self) -> None:
        store = self.shard.store
        if not isinstance(store, RedisStore):
            raise ConfigError("cluster", 'requires store = "redis"')
        # before the other workers can take a session from this one
        await self.link.catch_up(self.shard, store, self.retained_stamps)
        await super().start()
        self.link.shared_changed = self._shared_changed
        await self.link.start(self.shard, store, self.retained_stamps)

    def _host_shared(self) -> bool:
        return False

    def _shared_changed(self) -> None:
        # read on every publish: kept as a plain attribute
        self.remote_shared = self._host_shared() or self.link.interest.has_shared()

    async def stop(self) -> None:
        await self.link.stop()
        await super().stop()

    def forward(self, message: Message) -> int:
        # the link first: it numbers a message it sends (``nid``), and the
        # host's shards get the number with the message
        nodes = self.link.forward(message)
        return super().forward(message) + nodes

    def shared_for(self, topic: str) -> dict[tuple[str, str], dict[Any, int]]:
        host = super().shared_for(topic)
        interest = self.link.interest
        if not interest.has_shared():
            return host
        nodes = interest.shared_for(topic)
        if not host:
            return nodes
        for key, members in nodes.items():
            host.setdefault(key, {}).update(members)
        return host

    def forward_shared(self, holder: Any, message: Message, group: str, topic_filter: str) -> None:
        if isinstance(holder, tuple):  # (node, worker): another node's process
            self.link.forward_shared(holder, message, group, topic_filter)
        else:
            super().forward_shared(holder, message, group, topic_filter)

    def deliver_to(
        self,
        shard_id: Any,
        client_id: str,
        message: Message,
        qos: int,
        retain: bool,
        ids: list[int] | None,
    ) -> None:
        if isinstance(shard_id, tuple):  # (node, worker): taken over through Redis
            self.link.deliver_to(shard_id, client_id, message, qos, retain, ids)
        else:
            super().deliver_to(shard_id, client_id, message, qos, retain, ids)

    def subscription_added(self, full_filter: str) -> None:
        super().subscription_added(full_filter)
        self.link.subscription_added(full_filter)

    def subscription_removed(self, full_filter: str) -> None:
        super().subscription_removed(full_filter)
        self.link.subscription_removed(full_filter)

    def retained_changed(self, topic: str, message: Message | None) -> None:
        # one stamp for this host's workers and the other nodes: the host
        # fabric stamps it (LocalFabric), or we do
        stamps = self.retained_stamps
        stamps.pop(topic, None)
        super().retained_changed(topic, message)
        stamp = stamps.setdefault(topic, time.time())
        self.link.retained_changed(topic, message, stamp)

    def barrier(self) -> Awaitable[None]:
        local = self._local_barrier()
        nodes = self.link.barrier(local)
        if nodes is not None:
            return nodes
        if local is not None:
            return local
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def stored(self) -> asyncio.Future[None] | None:
        local = self._local_stored()
        nodes = self.link.stored()
        if nodes is None:
            return local
        if local is None:
            return nodes
        return all_done(local, nodes)

    def store_rewritten(self) -> None:
        super().store_rewritten()
        self.link.rewritten()

    def publish_stats(self, figures: dict[str, int]) -> None:
        super().publish_stats(figures)
        self.link.publish_stats(figures)

    def cluster_stats(self) -> tuple[int, dict[str, int]] | None:
        return self.link.cluster_figures

    # -- client ids: owned in the whole cluster (owners.py) ------------------------------

    async def acquire(self, client_id: str, clean_start: bool) -> tuple[int, SessionState | None]:
        try:
            return await self.link.owners.claim(client_id, clean_start)
        except OwnersUnavailable:
            # Redis is away: this node serves on, claiming on its own
            self.host_claims.add(client_id)
            return await super().acquire(client_id, clean_start)

    def claim_done(self, client_id: str, epoch: int) -> None:
        if not self.link.owners.settled(client_id, epoch):
            super().claim_done(client_id, epoch)

    def release(self, client_id: str, epoch: int) -> None:
        if client_id in self.host_claims:
            self.host_claims.discard(client_id)
            super().release(client_id, epoch)
        else:
            self.link.owners.release(client_id, epoch)

    def restored(self, client_id: str, session: Session) -> None:
        self.link.owners.restored(client_id, session)


class ClusterFabric(NodeFabric):
    """A single-process node: no other shard on this host."""

    def __init__(self, link: NodeLink) -> None:
        self.link = link
        self.retained_stamps = {}
        self.host_claims = set()

    # called for every publish and every acknowledgement: no host fabric to ask

    def forward(self, message: Message) -> int:
        return self.link.forward(message)

    def stored(self) -> asyncio.Future[None] | None:
        return self.link.stored()


class ClusterLocalFabric(NodeFabric, LocalFabric):
    """One worker of a node with several: its host's workers over Unix sockets."""

    def __init__(self, link: NodeLink, shard_id: int, workers: int, run_dir: str) -> None:
        LocalFabric.__init__(self, shard_id, workers, run_dir)
        self.link = link
        self.host_claims = set()

    def _local_barrier(self) -> Awaitable[None] | None:
        return LocalFabric.barrier(self)

    def _host_shared(self) -> bool:
        return self.interest.has_shared()

    def _local_stored(self) -> asyncio.Future[None] | None:
        return LocalFabric.stored(self)
