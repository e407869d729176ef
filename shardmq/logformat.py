"""Log formats for ``log_format``: ``text`` (the default) and ``json``.

``json`` writes one JSON object per line, for log shippers (Loki, Elastic,
CloudWatch)::

    {"time": "2026-12-04T06:12:07.123Z", "level": "info", "logger": "shardmq.connection",
     "worker": 0, "message": "client c1 connected ...", "client_id": "c1", "event": "connect"}

``worker`` is the worker id (``shardmq/worker/main.py`` sets it on every
record of a worker process); the supervisor's and the single-process
broker's records have ``null``. A record logged with
``extra={"client_id": ..., "event": ...}`` carries those fields too (and
the connection lines' ``reason``, ``username``, ``remote_address``,
``protocol_version``, ``clean_start``, ``keep_alive``, ``session_present``),
and any exception is in ``exc``. Only the standard library is imported here, so the
CLI can set it up before the broker is loaded.
"""

from __future__ import annotations

import json
import logging
import time

#: today's text format (unchanged: scripts and tests read it)
TEXT_FORMAT = "%(asctime)s %(levelname)-8s [%(process)d] %(name)s: %(message)s"

#: record attributes copied to the JSON object when a record has them (set
#: with ``extra=``): a client's, and the connection lines' details
_EXTRA_FIELDS = (
    "client_id",
    "event",
    "reason",
    "username",
    "remote_address",
    "protocol_version",
    "clean_start",
    "keep_alive",
    "session_present",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        worker = getattr(record, "worker", None)
        message = record.getMessage()
        if worker is not None:
            prefix = f"[w{worker}] "  # the text format's prefix: a field here
            if message.startswith(prefix):
                message = message[len(prefix) :]
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, object] = {
            "time": f"{seconds}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "worker": worker,
            "message": message,
        }
        for name in _EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra field that is not JSON (bytes, an address tuple
        # is fine) still gives a line rather than a logging error
        return json.dumps(entry, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for a ``log_format`` setting ("text" or "json")."""
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT)
