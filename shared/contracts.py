"""NATS subjects and the shapes of the messages the services exchange.

Every payload is a MessagePack map (shared.codec). A reply is either the success map
described below or `{"error": {"code": str, "message": str}}` (shared.errors.ServiceError).
The request id travels in the `Dbg-Request-Id` header.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

SESSION_QUEUE = "session"
QUERY_QUEUE = "query"


@dataclass(frozen=True)
class Subjects:
    """All subjects under one prefix (`NATS_SUBJECT_PREFIX`, default `dbgenie`)."""

    prefix: str = "dbgenie"

    # Session service, queue group "session".
    @property
    def session_get(self) -> str:
        return f"{self.prefix}.session.get"

    @property
    def session_set(self) -> str:
        return f"{self.prefix}.session.set"

    @property
    def session_patch(self) -> str:
        return f"{self.prefix}.session.patch"

    @property
    def session_delete(self) -> str:
        return f"{self.prefix}.session.delete"

    @property
    def session_ping(self) -> str:
        return f"{self.prefix}.session.ping"

    # Query service, queue group "query".
    @property
    def query_execute(self) -> str:
        return f"{self.prefix}.query.execute"

    @property
    def query_ping(self) -> str:
        return f"{self.prefix}.query.ping"

    def query_control(self, stream_id: str) -> str:
        return f"{self.prefix}.query.control.{stream_id}"


# --- session ---------------------------------------------------------------------------


class SessionGet(TypedDict):
    """`session.get` request; reply `{"session": map | None}`. Slides the expiry."""

    sid: str


class SessionSet(TypedDict):
    """`session.set` request: store `data` whole under `sid`; reply `{"ok": True}`.

    `replace_sid`, when given, is deleted in the same call (login rotates the sid).
    """

    sid: str
    data: dict[str, Any]
    replace_sid: NotRequired[str | None]


class SessionPatch(TypedDict):
    """`session.patch` request: set and remove top-level fields atomically.

    Reply `{"session": map | None}` (None when there was no such session).
    """

    sid: str
    set: NotRequired[dict[str, Any]]
    unset: NotRequired[list[str]]


class SessionDelete(TypedDict):
    """`session.delete` request; reply `{"deleted": bool}`."""

    sid: str


# --- query -----------------------------------------------------------------------------


class QueryExecute(TypedDict):
    """`query.execute` request.

    The gateway subscribes to `inbox` first, then sends this request. The query replica
    that takes it subscribes to `query_control(stream_id)` and replies `{"accepted": True}`
    (or an error); then it publishes the stream messages below to `inbox`, never more than
    `window` `rows` messages ahead of the last acknowledged one.
    """

    sql: str
    source: NotRequired[str | None]
    stream_id: str
    inbox: str
    window: int


# fmt: off
# Stream messages, published by the query service to the gateway's inbox. "t" names the kind.
STREAM_META = "meta"    # {"t", "columns": [{"name", "type"}], "preview": [[...], ...]}: first rows read
STREAM_ROWS = "rows"    # {"t", "seq": int >= 1, "offset": int, "count": int, "rows": bytes (a JSON array of rows)}
STREAM_END = "end"      # {"t", "row_count": int, "truncated": bool}
STREAM_ERROR = "error"  # {"t", "error": {"code", "message"}}
STREAM_HEARTBEAT = "hb"  # {"t", "seq": last rows seq sent}: the producer is alive while the database works

# Control messages, published by the gateway to `query_control(stream_id)`.
CONTROL_ACK = "ack"        # {"t", "seq": int}: every rows message up to seq is delivered
CONTROL_CANCEL = "cancel"  # {"t"}: the client is gone; stop the query and free the cursor
# fmt: on
