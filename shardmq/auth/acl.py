"""Mosquitto's ACL file, compiled per client into cheap topic checks.

Theory of operation
-------------------
``AclFile`` holds the rules as mosquitto 2.0 reads them
(``src/security_default.c``: ``aclfile__parse``, ``add__acl``,
``add__acl_pattern``, ``mosquitto_acl_check_default``; ``src/security.c``:
``acl__check_dollar``)::

    # comment
    topic [read|write|readwrite|deny] FILTER     access defaults to readwrite
    user NAME                                    starts NAME's block
    pattern [read|write|readwrite|deny] FILTER   %c: client id, %u: username

- ``topic`` lines before the first ``user`` line apply to *every* client,
  with or without a username; a client with a username also gets the
  ``topic`` lines of its own ``user`` block(s), and ``deny`` lines of both
  are tried first. This is where shardmq departs from mosquitto, whose
  ``acl__find_acls`` picks one list by username, so that its lines before
  the first ``user`` apply to anonymous clients only: an operator reads
  "before any user" as "for everyone", and a rule meant for all should not
  need copying into every block.
- ``pattern`` lines apply to every client wherever they stand in the file.
  ``%c`` and ``%u`` are replaced anywhere in the filter, as mosquitto 2.0
  does. A pattern with ``%u`` never applies to an anonymous client. If the
  username or the client id holds ``+`` or ``#``, no pattern applies to the
  client at all: such a name would turn ``%u`` into a wildcard.
- The first rule that matches decides. ``deny`` rules are tried before the
  others of their list, so a deny beats a grant in the same list; but the
  client's ``topic`` rules are all tried before any ``pattern`` rule, so a
  ``topic`` grant wins over a ``pattern`` deny (mosquitto's order). A rule
  that matches without granting the access asked for (``read`` for a
  publish) does not decide; no deciding rule means no.
- Whatever the rules say, a client may not publish to ``$SYS/...`` (bar
  ``$SYS/broker/connection/+/state``, bridge status) nor to or from topics
  starting ``$share`` (``acl__check_dollar``). Filters starting with a
  wildcard do not match ``$`` topics [MQTT-4.7.2-1], so ``topic read #``
  does not grant ``$SYS``; ``topic read $SYS/#`` does.

``AclFile.for_client`` compiles the rules that apply to one client once,
with ``%c``/``%u`` filled in, into a ``ClientAcl`` whose checks are cached
per topic.

Subscribing. mosquitto 2.0's ACL file never refuses a SUBSCRIBE (its check
returns success for ``MOSQ_ACL_SUBSCRIBE``, "FIXME - implement ACL
subscription strings") and filters every delivery with a READ check on the
topic. ``ClientAcl.may_subscribe`` is stricter, like mosquitto's
dynamic-security plugin (``mosquitto_sub_matches_acl``): a subscription is
allowed when a rule granting read covers every topic the filter can match
(``read sensors/#`` allows ``sensors/+/temp``, not ``#``), and refused when
a ``deny`` rule covers it all. A filter that only overlaps a denied area is
allowed; ``may_read`` then keeps the denied topics out at delivery time.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..protocol.topics import SHARE_PREFIX, is_valid_topic_filter, parse_shared, topic_matches
from .files import AuthFileError, read_file, split_lines

__all__ = [
    "Access",
    "AclFile",
    "AclRule",
    "ClientAcl",
    "filter_covers",
]

SETTING = "acl_file"

#: Results cached per ClientAcl and check; the cache is emptied when full,
#: which bounds memory for a client that publishes to ever-new topics.
CACHE_SIZE = 1024


class Access(enum.IntFlag):
    """What a rule grants: mosquitto's ``MOSQ_ACL_*`` bits. ``NONE`` is ``deny``."""

    NONE = 0
    READ = 1
    WRITE = 2
    READWRITE = READ | WRITE


#: The access words of the file.
ACCESS_WORDS: dict[str, Access] = {
    "read": Access.READ,
    "write": Access.WRITE,
    "readwrite": Access.READWRITE,
    "deny": Access.NONE,
}


@dataclass(frozen=True, slots=True)
class AclRule:
    """One ``topic`` or ``pattern`` line: ``access`` NONE means deny."""

    access: Access
    topic: str
    line: int = 0

    @property
    def deny(self) -> bool:
        return self.access == Access.NONE


def filter_covers(acl_filter: str, sub_filter: str) -> bool:
    """True if every topic that ``sub_filter`` matches is matched by ``acl_filter``.

    Both are valid, non-shared filters. Level by level: ``#`` in the ACL
    covers whatever follows (and the parent level, as ``a/#`` matches ``a``);
    ``+`` covers any one level but not ``#``; a literal covers only itself.
    A subscription starting with ``$`` is covered only by an ACL filter
    starting with ``$`` (wildcards do not reach ``$`` topics [MQTT-4.7.2-1]).
    """
    if sub_filter.startswith("$") and not acl_filter.startswith("$"):
        return False
    alevels = acl_filter.split("/")
    slevels = sub_filter.split("/")
    nsub = len(slevels)
    for i, level in enumerate(alevels):
        if level == "#":
            return True
        if i >= nsub:
            return False
        sub = slevels[i]
        if sub == "#":
            return False  # the subscription reaches deeper than this ACL level
        if level != "+" and level != sub:
            return False  # a literal ACL level covers only the same literal
    return len(alevels) == nsub


class ClientAcl:
    """The rules that apply to one client, in the order they are tried.

    ``may_publish``, ``may_read`` and ``may_subscribe`` answer from a
    per-check cache of at most ``cache_size`` entries, since they run for
    every message. Build one with ``AclFile.for_client``, from any ordered
    rules, or ``ClientAcl.allow_all()`` for a client no ACL restricts.
    """

    __slots__ = ("_allow_all", "_cache_size", "_publish", "_read", "_rules", "_subscribe")

    def __init__(
        self, rules: Iterable[AclRule], *, allow_all: bool = False, cache_size: int = CACHE_SIZE
    ) -> None:
        self._rules: tuple[tuple[Access, str], ...] = tuple((r.access, r.topic) for r in rules)
        self._allow_all = allow_all
        self._cache_size = max(1, cache_size)
        self._publish: dict[str, bool] = {}
        self._read: dict[str, bool] = {}
        self._subscribe: dict[str, bool] = {}

    @classmethod
    def allow_all(cls) -> ClientAcl:
        """A client without restrictions (a superuser, or no ACL configured).

        The ``$`` rules still hold: nobody publishes to ``$SYS``.
        """
        return cls((), allow_all=True)

    @property
    def rules(self) -> tuple[AclRule, ...]:
        return tuple(AclRule(access, topic) for access, topic in self._rules)

    def __repr__(self) -> str:
        if self._allow_all:
            return "ClientAcl.allow_all()"
        return f"ClientAcl({len(self._rules)} rules)"

    # -- checks ------------------------------------------------------------

    def may_publish(self, topic: str) -> bool:
        """May the client publish to the topic name ``topic``?"""
        cached = self._publish.get(topic)
        if cached is None:
            cached = self._remember(self._publish, topic, self._decide_publish(topic))
        return cached

    def may_read(self, topic: str) -> bool:
        """May a message on the topic name ``topic`` be delivered to the client?

        Checked at delivery time, so a wildcard subscription does not leak
        topics the client may not read.
        """
        cached = self._read.get(topic)
        if cached is None:
            cached = self._remember(self._read, topic, self._decide_read(topic))
        return cached

    def may_subscribe(self, topic_filter: str) -> bool:
        """May the client subscribe to ``topic_filter`` (shared ones by their inner filter)?"""
        cached = self._subscribe.get(topic_filter)
        if cached is None:
            cached = self._remember(
                self._subscribe, topic_filter, self._decide_subscribe(topic_filter)
            )
        return cached

    def _remember(self, cache: dict[str, bool], key: str, value: bool) -> bool:
        if len(cache) >= self._cache_size:
            cache.clear()
        cache[key] = value
        return value

    # -- decisions -----------------------------------------------------------

    def _decide_publish(self, topic: str) -> bool:
        if topic.startswith("$"):
            if topic.startswith("$SYS"):
                # acl__check_dollar: only a bridge's status topic may be written.
                if not topic_matches("$SYS/broker/connection/+/state", topic):
                    return False
            elif topic.startswith("$share"):
                return False
        return self._decide(topic, Access.WRITE)

    def _decide_read(self, topic: str) -> bool:
        if topic.startswith("$share"):
            return False  # acl__check_dollar: $share is for SUBSCRIBE only
        return self._decide(topic, Access.READ)

    def _decide(self, topic: str, wanted: Access) -> bool:
        if self._allow_all:
            return True
        for access, rule_filter in self._rules:
            if rule_filter.startswith(SHARE_PREFIX):
                # Only $share topics could match it, and those were refused above;
                # topic_matches would read it as a shared subscription instead.
                continue
            if topic_matches(rule_filter, topic):
                if access == Access.NONE:
                    return False
                if access & wanted:
                    return True
        return False

    def _decide_subscribe(self, topic_filter: str) -> bool:
        if not is_valid_topic_filter(topic_filter):
            return False
        _group, inner = parse_shared(topic_filter)
        if self._allow_all:
            return True
        for access, rule_filter in self._rules:
            if filter_covers(rule_filter, inner):
                if access == Access.NONE:
                    return False
                if access & Access.READ:
                    return True
        return False


# -- the file ---------------------------------------------------------------------

# The left-to-right scan of mosquitto_acl_check_default: "%c" and "%u" are
# replaced wherever they stand; any other "%" is kept.
_PLACEHOLDER = re.compile(r"%([cu])")


def _valid_acl_filter(topic: str) -> bool:
    # mosquitto_sub_topic_check knows nothing of $share: "$share/#" is a plain
    # filter to it. Check such a filter with its "$" replaced, which changes
    # no wildcard rule, so is_valid_topic_filter does not parse a share.
    if topic.startswith(SHARE_PREFIX):
        topic = "x" + topic[1:]
    return is_valid_topic_filter(topic)


def _has_wildcard(name: str) -> bool:
    return "+" in name or "#" in name


@dataclass(frozen=True, slots=True)
class AclFile:
    """The rules of one ACL file, grouped as mosquitto applies them."""

    #: ``topic`` lines before the first ``user`` line: every client
    #: (mosquitto: anonymous clients only).
    general: tuple[AclRule, ...] = ()
    #: ``topic`` lines of each ``user`` block (blocks of one name are merged).
    users: Mapping[str, tuple[AclRule, ...]] = field(default_factory=dict)
    #: ``pattern`` lines, for every client.
    patterns: tuple[AclRule, ...] = ()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AclFile:
        """Read the file at ``path``; AuthFileError names the file (and line)."""
        return cls.parse(read_file(SETTING, path), os.fspath(path))

    @classmethod
    def parse(cls, data: str | bytes, path: str | os.PathLike[str] = "<string>") -> AclFile:
        """Parse the file's content; ``path`` only names it in errors.

        Fields are separated by spaces, as mosquitto's ``strtok(" ")``; a
        filter may itself hold spaces (``topic read a b`` is the filter
        ``a b``). ``topic read`` alone is the filter ``read`` with readwrite
        access, as in mosquitto. Unlike mosquitto, a ``#`` after leading
        blanks starts a comment too.
        """
        general: list[AclRule] = []
        users: dict[str, list[AclRule]] = {}
        patterns: list[AclRule] = []
        current: list[AclRule] = general
        for number, line in enumerate(split_lines(SETTING, path, data), start=1):

            def fail(message: str, number: int = number) -> AuthFileError:
                return AuthFileError(SETTING, path, message, line=number)

            line = line.rstrip()
            stripped = line.lstrip(" ")
            if not stripped or stripped.startswith("#"):
                continue
            keyword, _, rest = stripped.partition(" ")
            rest = rest.lstrip(" ")
            if keyword in ("topic", "pattern"):
                rule = cls._parse_rule(keyword, rest, number, fail)
                if keyword == "topic":
                    current.append(rule)
                else:
                    patterns.append(rule)
            elif keyword == "user":
                name = rest.strip()
                if not name:
                    raise fail("'user' without a username")
                current = users.setdefault(name, [])
            else:
                hint = " (fields are separated by spaces)" if "\t" in keyword else ""
                raise fail(
                    f"unknown keyword {keyword!r}, expected 'topic', 'pattern' or 'user'{hint}"
                )
        return cls(
            general=tuple(general),
            users={name: tuple(rules) for name, rules in users.items()},
            patterns=tuple(patterns),
        )

    @staticmethod
    def _parse_rule(
        keyword: str, rest: str, number: int, fail: Callable[[str], AuthFileError]
    ) -> AclRule:
        if not rest:
            raise fail(f"{keyword!r} without a topic filter")
        word, _, topic = rest.partition(" ")
        topic = topic.strip()
        if topic:
            if word not in ACCESS_WORDS:
                allowed = ", ".join(repr(w) for w in ACCESS_WORDS)
                raise fail(f"unknown access {word!r}, expected one of {allowed}")
            access = ACCESS_WORDS[word]
        else:
            # mosquitto: one word after the keyword is the filter, readwrite.
            topic, access = word, Access.READWRITE
        if not _valid_acl_filter(topic):
            raise fail(f"invalid topic filter {topic!r}")
        return AclRule(access, topic, number)

    # -- per client ------------------------------------------------------------

    def rules_for(self, username: str | None, client_id: str) -> list[AclRule]:
        """The rules that apply to this client, substituted, in the order tried."""
        own = self.general
        if username is not None:
            own += self.users.get(username, ())
        ordered = _deny_first(own)
        if self.patterns and not (
            (username is not None and _has_wildcard(username)) or _has_wildcard(client_id)
        ):
            substituted: list[AclRule] = []
            for rule in self.patterns:
                if username is None and "%u" in rule.topic:
                    continue
                values = {"c": client_id, "u": username}

                def fill(match: re.Match[str], values: dict[str, str | None] = values) -> str:
                    value = values[match.group(1)]
                    return match.group(0) if value is None else value

                topic = _PLACEHOLDER.sub(fill, rule.topic)
                substituted.append(AclRule(rule.access, topic, rule.line))
            ordered.extend(_deny_first(substituted))
        return ordered

    def for_client(
        self, username: str | None, client_id: str, *, cache_size: int = CACHE_SIZE
    ) -> ClientAcl:
        """The compiled checks for one client (``username`` None: anonymous)."""
        return ClientAcl(self.rules_for(username, client_id), cache_size=cache_size)


def _deny_first(rules: Iterable[AclRule]) -> list[AclRule]:
    # add__acl and add__acl_pattern put "deny" rules at the head of the list.
    listed = list(rules)
    return [r for r in listed if r.deny] + [r for r in listed if not r.deny]
