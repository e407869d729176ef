"""``shardmq ctl``: the admin API (``worker/http.py``) from a shell.

Each command is one HTTP request to a running broker's ``metrics_port``
(``--url``, or SHARDMQ_ADMIN_URL) with its ``admin_token`` (``--token``, or
SHARDMQ_ADMIN_TOKEN, the variable ``shardmq serve`` reads it from too). It
prints a table, or the API's JSON with ``--json``; an error is one line on
stderr and exit status 1. Only the standard library talks HTTP here: this
command must start fast and load nothing of the broker.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any, NoReturn
from urllib.parse import quote, urlencode

import click

#: exit status of a failed ``shardmq ctl`` command
EXIT_CTL_ERROR = 1
DEFAULT_URL = "http://127.0.0.1:9100"


class Api:
    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        if self.token is None:
            _fail("no token: give --token or set SHARDMQ_ADMIN_TOKEN")
        target = self.url + path
        if query:
            args = {k: v for k, v in query.items() if v is not None}
            if args:
                target += "?" + urlencode(args)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(target, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            try:
                message = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                message = text.strip() or exc.reason
            _fail(f"{exc.code}: {message}")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            _fail(f"cannot reach {self.url}: {reason}")


def _fail(message: str) -> NoReturn:
    click.echo(f"shardmq ctl: error: {' '.join(str(message).split())}", err=True)
    raise SystemExit(EXIT_CTL_ERROR)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    cells = [[("-" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _footer(answer: dict[str, Any]) -> None:
    meta = answer.get("meta", {})
    more = f" (more: --page {meta['page'] + 1})" if meta.get("hasnext") else ""
    click.echo(f"{meta.get('count', 0)} in all{more}")
    if answer.get("missing_workers"):
        workers = ", ".join(map(str, answer["missing_workers"]))
        click.echo(f"workers {workers} did not answer", err=True)


def _show(value: Any, as_json: bool) -> bool:
    if as_json:
        click.echo(json.dumps(value, indent=2))
    return as_json


@click.group()
@click.option(
    "--url",
    envvar="SHARDMQ_ADMIN_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="The broker's metrics_port. [env: SHARDMQ_ADMIN_URL]",
)
@click.option(
    "--token",
    envvar="SHARDMQ_ADMIN_TOKEN",
    default=None,
    help="The broker's admin_token. [env: SHARDMQ_ADMIN_TOKEN]",
)
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait.")
@click.pass_context
def ctl(ctx: click.Context, url: str, token: str | None, timeout: float) -> None:
    """Ask a running broker through its admin API (admin_token, metrics_port).

    \b
    shardmq ctl clients [--prefix P] [--username U]   who is connected
    shardmq ctl clients ID                            one client in detail
    shardmq ctl kick ID [--discard]                   disconnect (0x98)
    shardmq ctl subscriptions TOPIC                   who would get TOPIC
    shardmq ctl publish TOPIC PAYLOAD [-q 1] [-r]     publish
    shardmq ctl retained [TOPIC] [--delete]           retained messages
    """
    ctx.obj = Api(url, token, timeout)


_json_option = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
_page_options = [
    click.option("--page", type=click.IntRange(1), default=None, help="Page (from 1)."),
    click.option("--limit", type=click.IntRange(1, 10_000), default=None, help="Rows a page."),
]


def _paged(f: Any) -> Any:
    for option in reversed(_page_options):
        f = option(f)
    return f


@ctl.command()
@click.argument("client_id", required=False)
@click.option("--prefix", default=None, help="Only client ids that start with this.")
@click.option("--username", default=None, help="Only clients with this username.")
@_paged
@_json_option
@click.pass_obj
def clients(
    api: Api,
    client_id: str | None,
    prefix: str | None,
    username: str | None,
    page: int | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """List the clients and sessions, or show one (CLIENT_ID)."""
    if client_id is not None:
        detail = api.call("GET", "/api/v1/clients/" + quote(client_id, safe=""))
        if _show(detail, as_json):
            return
        subs = detail.pop("subscriptions")
        for key, value in detail.items():
            click.echo(f"{key}: {'-' if value is None else value}")
        click.echo(f"subscriptions: {len(subs)}")
        if subs:
            _table(subs, ["topic_filter", "qos", "no_local", "retain_as_published", "identifier"])
        return
    query = {"prefix": prefix, "username": username, "page": page, "limit": limit}
    answer = api.call("GET", "/api/v1/clients", query)
    if _show(answer, as_json):
        return
    columns = ["client_id", "connected", "username", "protocol", "peer", "worker"]
    _table(answer["data"], columns + ["subscriptions", "queued", "inflight"])
    _footer(answer)


@ctl.command()
@click.argument("client_id")
@click.option("--discard", is_flag=True, help="End its session too (subscriptions, queue).")
@_json_option
@click.pass_obj
def kick(api: Api, client_id: str, discard: bool, as_json: bool) -> None:
    """Disconnect a client with 0x98 Administrative action."""
    query = {"discard": "true"} if discard else None
    answer = api.call("DELETE", "/api/v1/clients/" + quote(client_id, safe=""), query)
    if not _show(answer, as_json):
        click.echo(f"{client_id}: {answer['result']}")


@ctl.command()
@click.argument("topic")
@_paged
@_json_option
@click.pass_obj
def subscriptions(api: Api, topic: str, page: int | None, limit: int | None, as_json: bool) -> None:
    """The subscriptions a message on TOPIC would reach."""
    answer = api.call(
        "GET", "/api/v1/subscriptions", {"topic": topic, "page": page, "limit": limit}
    )
    if _show(answer, as_json):
        return
    _table(answer["data"], ["client_id", "topic_filter", "qos", "identifier", "worker"])
    _footer(answer)


@ctl.command()
@click.argument("topic")
@click.argument("payload")
@click.option("-q", "--qos", type=click.IntRange(0, 2), default=0, show_default=True)
@click.option("-r", "--retain", is_flag=True, help="Retain it.")
@click.option("--base64", "is_base64", is_flag=True, help="PAYLOAD is base64 (binary payloads).")
@click.option(
    "-D",
    "--user-property",
    "user_properties",
    multiple=True,
    metavar="NAME=VALUE",
    help="A user property (repeatable).",
)
@click.option("--content-type", default=None)
@click.option("--expiry", type=click.IntRange(0, 0xFFFFFFFF), default=None, help="Seconds.")
@_json_option
@click.pass_obj
def publish(
    api: Api,
    topic: str,
    payload: str,
    qos: int,
    retain: bool,
    is_base64: bool,
    user_properties: tuple[str, ...],
    content_type: str | None,
    expiry: int | None,
    as_json: bool,
) -> None:
    """Publish PAYLOAD to TOPIC as the broker."""
    if is_base64:
        try:
            base64.b64decode(payload, validate=True)
        except ValueError:
            _fail("PAYLOAD is not valid base64")
    props: dict[str, Any] = {}
    for item in user_properties:
        name, sep, value = item.partition("=")
        if not sep:
            _fail(f"--user-property {item!r}: expected NAME=VALUE")
        props.setdefault("user_properties", {})[name] = value
    if content_type is not None:
        props["content_type"] = content_type
    if expiry is not None:
        props["message_expiry_interval"] = expiry
    body: dict[str, Any] = {
        "topic": topic,
        "payload": payload,
        "payload_encoding": "base64" if is_base64 else "plain",
        "qos": qos,
        "retain": retain,
    }
    if props:
        body["properties"] = props
    answer = api.call("POST", "/api/v1/publish", body=body)
    if not _show(answer, as_json):
        click.echo(f"published to {topic}")


@ctl.command()
@click.argument("topic", required=False)
@click.option("--filter", "topic_filter", default=None, help="List those matching this filter.")
@click.option("--delete", is_flag=True, help="Clear TOPIC's retained message.")
@_paged
@_json_option
@click.pass_obj
def retained(
    api: Api,
    topic: str | None,
    topic_filter: str | None,
    delete: bool,
    page: int | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """List the retained messages, show TOPIC's, or clear it (--delete)."""
    if topic is None:
        if delete:
            _fail("--delete needs a TOPIC")
        answer = api.call(
            "GET", "/api/v1/retained", {"filter": topic_filter, "page": page, "limit": limit}
        )
        if _show(answer, as_json):
            return
        _table(answer["data"], ["topic", "qos", "payload", "payload_encoding"])
        _footer(answer)
        return
    path = "/api/v1/retained/" + quote(topic, safe="")
    if delete:
        answer = api.call("DELETE", path)
        if not _show(answer, as_json):
            click.echo(f"{topic}: cleared")
        return
    answer = api.call("GET", path)
    if not _show(answer, as_json):
        for key, value in answer.items():
            click.echo(f"{key}: {value}")
