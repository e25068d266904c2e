"""NATS subjects and the shapes of the messages the services exchange.

Every payload is a MessagePack map, described by a msgspec Struct below. A server decodes each
request with its Struct's decoder (shared.bus.Server), so a malformed one gets a `bad_request`
error naming the field path, and no handler validates by hand. A reply is either the
success Struct or an `ErrorReply`. The request id travels in the `Dbg-Request-Id` header.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, overload

import msgspec

from shared.errors import BAD_REQUEST, ServiceError
from shared.limits import MAX_SQL_CHARS

SESSION_QUEUE = "session"
QUERY_QUEUE = "query"


class _Subject:
    """One subject under the Subjects' prefix: `session_get = _Subject("session.get")` reads `<prefix>.session.get`."""

    __slots__ = ("suffix",)

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix

    @overload
    def __get__(self, subjects: None, owner: type) -> _Subject: ...
    @overload
    def __get__(self, subjects: Subjects, owner: type | None = None) -> str: ...
    def __get__(self, subjects: Subjects | None, owner: type | None = None) -> str | _Subject:
        return self if subjects is None else f"{subjects.prefix}.{self.suffix}"


@dataclass(frozen=True)
class Subjects:
    """All subjects under one prefix (`NATS_SUBJECT_PREFIX`, default `dbgenie`)."""

    prefix: str = "dbgenie"

    # Session service, queue group "session".
    session_get = _Subject("session.get")
    session_get_many = _Subject("session.get_many")
    session_set = _Subject("session.set")
    session_patch = _Subject("session.patch")
    session_delete = _Subject("session.delete")
    session_ping = _Subject("session.ping")
    session_limit = _Subject("session.limit")

    def session_recent(self, op: str) -> str:
        """`session.recent.<op>`, op one of RECENT_OPS."""
        return f"{self.prefix}.session.recent.{op}"

    def session_conversation(self, op: str) -> str:
        """`session.conversation.<op>`, op one of CONVERSATION_OPS."""
        return f"{self.prefix}.session.conversation.{op}"

    def session_examples(self, op: str) -> str:
        """`session.examples.<op>`, op one of EXAMPLE_OPS."""
        return f"{self.prefix}.session.examples.{op}"

    def session_connection(self, op: str) -> str:
        """`session.connection.<op>`, op one of SESSION_CONNECTION_OPS."""
        return f"{self.prefix}.session.connection.{op}"

    # Query service, queue group "query".
    query_execute = _Subject("query.execute")
    query_ping = _Subject("query.ping")
    query_schema = _Subject("query.schema")
    query_schema_search = _Subject("query.schema.search")

    def query_control(self, stream_id: str) -> str:
        return f"{self.prefix}.query.control.{stream_id}"

    def query_connection(self, op: str) -> str:
        """`query.connection.<op>`, op one of QUERY_CONNECTION_OPS (queue group "query")."""
        return f"{self.prefix}.query.connection.{op}"

    # Broadcast (no queue group): every query replica closes the pools of the connection named.
    query_connection_closed = _Subject("query.connection.closed")

    # The audit trail: a JetStream stream, published to by the gateway.
    def audit(self, kind: str) -> str:
        return f"{self.prefix}.audit.{kind}"

    audit_all = _Subject("audit.>")


# --- common --------------------------------------------------------------------------


class ErrorBody(msgspec.Struct, frozen=True):
    """A ServiceError on the wire."""

    code: str
    message: str


class ErrorReply(msgspec.Struct, frozen=True):
    """The reply of any request that failed: `{"error": {"code", "message"}}`."""

    error: ErrorBody


class Ping(msgspec.Struct, frozen=True):
    """`session.ping` and `query.ping` request: an empty map (other fields are ignored)."""


class Ok(msgspec.Struct, frozen=True):
    """`{"ok": True}`: the request was done."""

    ok: bool = True


# --- session ---------------------------------------------------------------------------
# The session maps themselves (`data`, `set`, `session`) are what Flask-Session stores, so
# they stay open maps; these Structs check the envelope around them.

SID_PATTERN = "^[A-Za-z0-9_-]{1,256}$"
"""What Flask-Session generates (secrets.token_urlsafe) and what a JetStream KV key accepts."""

Sid = Annotated[str, msgspec.Meta(min_length=1)]
"""Any non-empty sid may be asked about; one that does not match SID_PATTERN is never stored."""
StorableSid = Annotated[str, msgspec.Meta(pattern=SID_PATTERN)]


class SessionGet(msgspec.Struct, frozen=True):
    """`session.get` request; reply `SessionReply`. Slides the expiry."""

    sid: Sid


class SessionSet(msgspec.Struct, frozen=True):
    """`session.set` request: store `data` whole under `sid`; reply `Ok`.

    `replace_sid`, when given, is deleted in the same call (login rotates the sid).
    """

    sid: StorableSid
    data: dict[str, Any]
    replace_sid: str | None = None


class SessionPatch(msgspec.Struct, frozen=True):
    """`session.patch` request: set and remove top-level fields atomically; reply `SessionReply`
    (`session` None when there was no such session)."""

    sid: Sid
    set: dict[str, Any] = {}
    unset: list[str] = []


class SessionDelete(msgspec.Struct, frozen=True):
    """`session.delete` request; reply `SessionDeleted`."""

    sid: Sid


NO_SESSION = msgspec.Raw(b"\xc0")
"""MessagePack nil: a read that found no session."""


class SessionReply(msgspec.Struct, frozen=True):
    """`session.get` and `session.patch` reply: `{"session": map | None}`.

    The map goes out as the MessagePack the store's decoder reads back (extension types and
    timestamps included), so it is carried here encoded.
    """

    session: msgspec.Raw = NO_SESSION


class SessionDeleted(msgspec.Struct, frozen=True):
    """`session.delete` reply."""

    deleted: bool


class SessionPong(msgspec.Struct, frozen=True):
    """`session.ping` reply: the store in use, and whether it is the fallback."""

    ok: bool
    store: str
    degraded: bool


# --- query -----------------------------------------------------------------------------

MAX_WINDOW = 64
DEFAULT_WINDOW = 8
QUERY_START_TIMEOUT_S = 5.0
"""How long the gateway waits for the reply to `query.execute`."""
QUERY_QUEUE_WAIT_MAX_S = 10.0
"""The most QUERY_QUEUE_WAIT_S may be: the gateway waits this much longer for a request that may queue."""
QUERY_ADMISSION_TRIES = 3
"""Tries of `query.execute` the gateway makes: the ones before the last are declined by a busy replica (another may take them); the last may wait in a queue."""
QUERY_OPEN_TIMEOUT_S = 3.0
"""How long `query.execute` waits for its source to open (connect, check the account, read the
function catalog) before replying `unavailable` ("the database <source> is not answering"):
well inside QUERY_START_TIMEOUT_S, leaving 2 s for the guard and the reply, so the gateway gets
that error rather than its own timeout."""


class Caller(msgspec.Struct, frozen=True, omit_defaults=True):
    """Who a statement runs for (ACCESS_POLICY, docs/access.md): the database role the gateway granted
    (None: the source's own account), and the user's id and email, which PostgreSQL sources see as
    `current_setting('dbgenie.user_id')` and `current_setting('dbgenie.email')`."""

    role: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")] | None = None
    user_id: Annotated[str, msgspec.Meta(max_length=512)] = ""
    email: Annotated[str, msgspec.Meta(max_length=512)] = ""


class QueryExecute(msgspec.Struct, frozen=True):
    """`query.execute` request.

    The gateway subscribes to `inbox` first, then sends this request. The query replica
    that takes it subscribes to `query_control(stream_id)` and replies `QueryAccepted`
    (or an error); then it publishes the stream messages below to `inbox`, never more than
    `window` `rows` messages ahead of the last acknowledged one.
    """

    # At least one character that is not white space.
    sql: Annotated[str, msgspec.Meta(max_length=MAX_SQL_CHARS, pattern=r"\S")]
    stream_id: Annotated[str, msgspec.Meta(pattern="^[A-Za-z0-9_-]{1,64}$")]  # one subject token
    inbox: Annotated[str, msgspec.Meta(max_length=256, pattern=r"^[^\s*>]+$")]  # a subject to publish to, no wildcards
    source: str | None = None
    window: Annotated[int, msgspec.Meta(ge=1, le=MAX_WINDOW)] = DEFAULT_WINDOW
    # A user's own connection (docs/connections.md) instead of an operator's source.
    connection: ConnectionRef | None = None
    caller: Caller | None = None
    wait: bool = True
    """False: a replica with every slot taken declines at once (code busy) rather than queue it."""


class QueryAccepted(msgspec.Struct, frozen=True):
    """`query.execute` reply: the stream is about to start."""

    accepted: bool


class QueryPong(msgspec.Struct, frozen=True):
    """`query.ping` reply: the configured sources, the default one, and each one's SQL dialect."""

    ok: bool
    sources: list[str]
    default: str
    dialects: dict[str, str]
    # Whether users may bring their own databases (CONNECTIONS_KEYS is set on the query service).
    connections: bool = False


# Stream messages, published by the query service to the gateway's inbox, and control
# messages, published by the gateway to `query_control(stream_id)`: tagged unions, the
# MessagePack map's "t" naming the kind (`message.t` reads it too).
STREAM_META = "meta"
STREAM_ROWS = "rows"
STREAM_END = "end"
STREAM_ERROR = "error"
STREAM_HEARTBEAT = "hb"
CONTROL_ACK = "ack"
CONTROL_CANCEL = "cancel"


class ColumnInfo(msgspec.Struct, frozen=True):
    name: str
    type: str


class StreamMeta(msgspec.Struct, frozen=True, tag_field="t", tag=STREAM_META):
    """The columns and the first rows read (the preview, cells cut to QUERY_PREVIEW_CELL_CHARS)."""

    t: ClassVar[str] = STREAM_META
    columns: list[ColumnInfo]
    preview: list[list[Any]]


class StreamRows(msgspec.Struct, frozen=True, tag_field="t", tag=STREAM_ROWS):
    """One chunk of the result: `count` rows from row `offset`, as the bytes of a JSON array of rows."""

    t: ClassVar[str] = STREAM_ROWS
    seq: Annotated[int, msgspec.Meta(ge=1)]
    offset: Annotated[int, msgspec.Meta(ge=0)]
    count: Annotated[int, msgspec.Meta(ge=0)]
    rows: bytes


class StreamEnd(msgspec.Struct, frozen=True, tag_field="t", tag=STREAM_END):
    """The result is complete: `row_count` rows in all, `truncated` when QUERY_MAX_ROWS left some out."""

    t: ClassVar[str] = STREAM_END
    row_count: Annotated[int, msgspec.Meta(ge=0)]
    truncated: bool


class StreamError(msgspec.Struct, frozen=True, tag_field="t", tag=STREAM_ERROR):
    """The query failed (or was cut off); nothing follows."""

    t: ClassVar[str] = STREAM_ERROR
    error: ErrorBody


class StreamHeartbeat(msgspec.Struct, frozen=True, tag_field="t", tag=STREAM_HEARTBEAT):
    """The producer is alive while the database works; `seq` is the last rows seq sent."""

    t: ClassVar[str] = STREAM_HEARTBEAT
    seq: Annotated[int, msgspec.Meta(ge=0)]


StreamMessage = StreamMeta | StreamRows | StreamEnd | StreamError | StreamHeartbeat


class Ack(msgspec.Struct, frozen=True, tag_field="t", tag=CONTROL_ACK):
    """Every rows message up to `seq` is delivered (acks are cumulative)."""

    t: ClassVar[str] = CONTROL_ACK
    seq: Annotated[int, msgspec.Meta(ge=0)]


class Cancel(msgspec.Struct, frozen=True, tag_field="t", tag=CONTROL_CANCEL):
    """The client is gone: stop the query and free the cursor."""

    t: ClassVar[str] = CONTROL_CANCEL


ControlMessage = Ack | Cancel


# --- typed payloads --------------------------------------------------------------------


def decode_payload[S: msgspec.Struct](data: bytes, kind: type[S]) -> S:
    """Decode a MessagePack request into its Struct; a bad one is a bad_request naming the field path."""
    try:
        return msgspec.msgpack.decode(data, type=kind)
    except msgspec.ValidationError as exc:
        raise ServiceError(BAD_REQUEST, f"invalid {kind.__name__}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ServiceError(BAD_REQUEST, f"payload is not valid MessagePack: {exc}") from None


def convert_payload[S: msgspec.Struct](value: Any, kind: type[S]) -> S:
    """The same check for a map that is already decoded (a reply, say)."""
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        raise ServiceError(BAD_REQUEST, f"invalid {kind.__name__}: {exc}") from None


# --- coalesced session reads ----------------------------------------------------------

MAX_SESSION_BATCH = 512
"""At most this many reads in one `session.get_many` message."""


class SessionRead(msgspec.Struct, frozen=True):
    """One read in a `session.get_many` batch: the sid, and the request id of the HTTP request it serves (for logs)."""

    sid: str
    request_id: str | None = None


class SessionGetMany(msgspec.Struct, frozen=True):
    """`session.get_many` request: session reads the gateway coalesced while earlier ones were in flight.

    Each read is a `session.get` (expiry slid, fallback while Redis is degraded); on Redis the
    batch is one pipeline of GETEX, one command per sid. Reply `SessionGetManyReply`.
    """

    reads: Annotated[list[SessionRead], msgspec.Meta(min_length=1, max_length=MAX_SESSION_BATCH)]


class SessionReadResult(msgspec.Struct, frozen=True, omit_defaults=True):
    """The outcome of one read: the session's MessagePack map (nil when there is none), or its own error."""

    session: msgspec.Raw = NO_SESSION
    error: ErrorBody | None = None


class SessionGetManyReply(msgspec.Struct, frozen=True, omit_defaults=True):
    """`session.get_many` reply: one result per read, in order; or `error` when the whole batch failed."""

    results: list[SessionReadResult] = []
    error: ErrorBody | None = None


# --- limiter ---------------------------------------------------------------------------

LIMIT_NAME_PATTERN = "^[A-Za-z0-9_-]+$"


class LimitWindow(msgspec.Struct, frozen=True):
    """One fixed window of a `session.limit` call: at most `limit` calls per `seconds` (0: off)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=32, pattern=LIMIT_NAME_PATTERN)]
    seconds: Annotated[int, msgspec.Meta(gt=0, le=366 * 86400)]
    limit: Annotated[int, msgspec.Meta(ge=0, le=2**31)]


class LimitRequest(msgspec.Struct, frozen=True):
    """`session.limit` request: count one call of `key` in every window (or only read them).

    `key` names what is limited, e.g. `quota:<uid>` or `login:<ip>`; window names are unique.
    """

    key: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    windows: Annotated[list[LimitWindow], msgspec.Meta(min_length=1, max_length=4)]
    consume: bool = True


class WindowUsage(msgspec.Struct, frozen=True):
    """Where one window stands after the call."""

    used: int
    limit: int
    resets_in: int
    """Seconds until this window starts afresh."""


class LimitResult(msgspec.Struct, frozen=True):
    """`session.limit` reply.

    `allowed` is False when an enabled window is full (then nothing was counted) and
    `retry_after` says in how many seconds every full window has reset. `local` is True
    when Redis was unreachable and this session replica counted on its own.
    """

    allowed: bool
    windows: dict[str, WindowUsage]
    retry_after: int | None = None
    local: bool = False


# --- describe_schema -------------------------------------------------------------------


class SchemaRequest(msgspec.Struct, frozen=True):
    """`query.schema` request: an overview of `source` (the default one when None), or details of `tables`."""

    source: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    tables: Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=256)]], msgspec.Meta(min_length=1, max_length=50)] | None = None
    connection: ConnectionRef | None = None
    caller: Caller | None = None
    """The tables are those the caller's role may read."""


class SchemaColumn(msgspec.Struct, frozen=True, omit_defaults=True):
    """A column; `nullable` and `primary_key` only in details (`tables` given)."""

    name: str
    type: str
    nullable: bool | msgspec.UnsetType = msgspec.UNSET
    primary_key: bool | msgspec.UnsetType = msgspec.UNSET
    comment: str | msgspec.UnsetType = msgspec.UNSET
    """The column's comment in the catalog (details only, when it has one)."""


class SchemaReference(msgspec.Struct, frozen=True):
    table: str
    columns: list[str]


class SchemaForeignKey(msgspec.Struct, frozen=True):
    columns: list[str]
    references: SchemaReference


class SchemaTable(msgspec.Struct, frozen=True, omit_defaults=True):
    """A table or view, named schema-qualified unless it is in the connection's default schema.

    `foreign_keys` and `row_estimate` (None when the database keeps no estimate) only in details.
    """

    name: str
    columns: list[SchemaColumn]
    foreign_keys: list[SchemaForeignKey] | msgspec.UnsetType = msgspec.UNSET
    row_estimate: int | None | msgspec.UnsetType = msgspec.UNSET
    comment: str | msgspec.UnsetType = msgspec.UNSET
    """The table's comment in the catalog (details only, when it has one)."""


class SchemaReply(msgspec.Struct, frozen=True):
    """`query.schema` reply. `truncated` when tables or columns were left out, `note` says what and why
    (and names requested tables that do not exist or cannot be read)."""

    source: str
    dialect: str
    tables: list[SchemaTable]
    truncated: bool = False
    note: str | None = None


# --- search_schema ---------------------------------------------------------------------
# `query.schema.search` (queue "query"): the tables of a source most relevant to a question,
# ranked by a per-source full-text index (services/query/search.py).

SEARCH_QUERY_MAX_CHARS = 2000


class SchemaSearchRequest(msgspec.Struct, frozen=True):
    """`query.schema.search` request: the question or keywords, on `source` (the default one when None) or the user's own `connection`."""

    query: Annotated[str, msgspec.Meta(min_length=1, max_length=SEARCH_QUERY_MAX_CHARS)]
    source: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=50)] = 10
    caller: Caller | None = None
    """Only tables the caller's role may read are found."""
    connection: ConnectionRef | None = None
    """A user's own database, searched as its own account; only its owner's requests reach it."""


class SearchColumn(msgspec.Struct, frozen=True, omit_defaults=True):
    """A column of a found table: `values` are a few distinct values of a low-cardinality text column."""

    name: str
    type: str
    primary_key: bool = False
    comment: str | None = None
    values: list[str] = []


class SearchTable(msgspec.Struct, frozen=True, omit_defaults=True):
    """A found table, with its foreign keys and its rank score (higher is more relevant)."""

    name: str
    score: float
    columns: list[SearchColumn]
    foreign_keys: list[SchemaForeignKey] = []
    comment: str | None = None
    row_estimate: int | None = None


class JoinPath(msgspec.Struct, frozen=True):
    """How two found tables join: the chain of `a.x = b.y` conditions along foreign keys (through tables not found, if need be)."""

    tables: list[str]
    on: list[str]


class SchemaSearchReply(msgspec.Struct, frozen=True):
    """`query.schema.search` reply: the tables best first, the join paths between them, and the index's size."""

    source: str
    dialect: str
    tables: list[SearchTable]
    joins: list[JoinPath]
    indexed_tables: int
    note: str | None = None


# --- conversations ---------------------------------------------------------------------
# `session.conversation.<op>` (queue "session"): a user's conversation history, owned by the
# session service. Every request names the user (`uid`), so a conversation id of another user
# is simply not found. Replies are the Structs below, or an error (`not_found`, `bad_request`,
# `too_large`, `conversation_full`, `unavailable`).

CONVERSATION_OPS = ("load", "append", "list", "create", "patch", "delete")
CONVERSATION_ID_PATTERN = "^[A-Za-z0-9_-]{1,128}$"
TITLE_MAX_CHARS = 80
STORED_PREVIEW_ROWS = 5
"""An execute_query output in history holds at most this many preview rows (the query service sends 5)."""

ConversationId = Annotated[str, msgspec.Meta(pattern=CONVERSATION_ID_PATTERN)]
UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
Title = Annotated[str, msgspec.Meta(max_length=TITLE_MAX_CHARS)]
ToolState = Literal["input-streaming", "input-available", "output-available", "output-error"]


class TextPart(msgspec.Struct, tag_field="type", tag="text", omit_defaults=True):
    text: str
    state: Literal["streaming", "done"] | msgspec.UnsetType = msgspec.UNSET
    providerMetadata: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


class ReasoningPart(msgspec.Struct, tag_field="type", tag="reasoning", omit_defaults=True):
    text: str
    id: str | msgspec.UnsetType = msgspec.UNSET
    state: Literal["streaming", "done"] | msgspec.UnsetType = msgspec.UNSET
    providerMetadata: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


class StepStartPart(msgspec.Struct, tag_field="type", tag="step-start"):
    pass


class QuerySummary(msgspec.Struct, omit_defaults=True):
    """An execute_query output as history keeps it: never more rows than the preview."""

    columns: list[Any]
    preview: Annotated[list[Any], msgspec.Meta(max_length=STORED_PREVIEW_ROWS)]
    row_count: int | msgspec.UnsetType = msgspec.UNSET
    truncated: bool | msgspec.UnsetType = msgspec.UNSET


class _ToolPart(msgspec.Struct, tag_field="type", omit_defaults=True):
    toolCallId: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    state: ToolState
    input: Any = msgspec.UNSET
    rawInput: Any = msgspec.UNSET
    errorText: str | msgspec.UnsetType = msgspec.UNSET
    preliminary: bool | msgspec.UnsetType = msgspec.UNSET
    title: str | msgspec.UnsetType = msgspec.UNSET
    providerExecuted: bool | msgspec.UnsetType = msgspec.UNSET


class ExecuteQueryPart(_ToolPart, tag="tool-execute_query"):
    output: QuerySummary | msgspec.UnsetType = msgspec.UNSET


class DescribeSchemaPart(_ToolPart, tag="tool-describe_schema"):
    output: Any = msgspec.UNSET


class SearchSchemaPart(_ToolPart, tag="tool-search_schema"):
    output: Any = msgspec.UNSET


class ShowChartPart(_ToolPart, tag="tool-show_chart"):
    """A chart the model proposed: the checked spec (type, x, y, title, the query's call id and columns)."""

    output: Any = msgspec.UNSET


class RecentQueriesPart(_ToolPart, tag="tool-get_recent_queries"):
    output: Any = msgspec.UNSET


MessagePart = TextPart | ReasoningPart | StepStartPart | ExecuteQueryPart | DescribeSchemaPart | SearchSchemaPart | ShowChartPart | RecentQueriesPart
"""What history keeps of a UIMessage: text, reasoning, steps and tool calls with their summaries; never `data-*` parts."""


class StoredMessage(msgspec.Struct, omit_defaults=True):
    """A UIMessage as useChat holds it, restricted to the parts history keeps."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    role: Literal["user", "assistant"]
    parts: list[MessagePart]
    metadata: Any = msgspec.UNSET


class ConversationRef(msgspec.Struct, frozen=True):
    """`session.conversation.create` / `delete` request; reply ConversationInfo (delete: `not_found` when there was none)."""

    uid: UserId
    id: ConversationId


class ConversationLoad(msgspec.Struct, frozen=True):
    """`session.conversation.load` request: the newest messages within `max_bytes` (0: all), at least `min_messages` of them."""

    uid: UserId
    id: ConversationId
    max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
    min_messages: Annotated[int, msgspec.Meta(ge=0, le=100)] = 2


class ConversationLoaded(msgspec.Struct):
    """`session.conversation.load` reply. `exists` is False for a conversation never created or stored.

    `total` counts every stored message; `messages` are the newest of them, oldest first.
    `partial` is True while Redis is down and only what was written during the outage is known.
    """

    exists: bool
    messages: list[StoredMessage]
    total: int
    title: str | None = None
    updated_at: int | None = None
    """Milliseconds since the epoch (Redis's clock) of the last append."""
    max_messages: int = 0
    max_message_bytes: int = 0
    partial: bool = False


class ConversationAppend(msgspec.Struct, frozen=True):
    """`session.conversation.append` request: add `messages` at the end, in one Redis command.

    `replace_last_of` (regenerate): when the conversation holds exactly this many messages,
    its last one is replaced. A conversation without a title gets its first user message's text.
    """

    uid: UserId
    id: ConversationId
    messages: Annotated[list[StoredMessage], msgspec.Meta(min_length=1, max_length=1000)]
    replace_last_of: Annotated[int, msgspec.Meta(ge=1)] | None = None


class ConversationAppended(msgspec.Struct):
    total: int
    updated_at: int | None = None
    fallback: bool = False
    """True when Redis was down: the messages wait in the fallback store for write-back."""


class ConversationList(msgspec.Struct, frozen=True):
    """`session.conversation.list` request: newest first, `limit` at a time, after `cursor` (from the previous reply)."""

    uid: UserId
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    cursor: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class ConversationInfo(msgspec.Struct):
    id: str
    title: str | None
    updated_at: int | None


class ConversationPage(msgspec.Struct):
    """`session.conversation.list` reply; `next_cursor` is None on the last page."""

    conversations: list[ConversationInfo]
    next_cursor: str | None = None


class ConversationDeleted(msgspec.Struct, frozen=True):
    """`session.conversation.delete` reply (a conversation that does not exist is `not_found`)."""

    deleted: bool = True


class ConversationPatch(msgspec.Struct, frozen=True):
    """`session.conversation.patch` request: a new title; reply ConversationInfo or `not_found`."""

    uid: UserId
    id: ConversationId
    title: Title


# --- verified examples -----------------------------------------------------------------
# `session.examples.<op>` (queue "session"): questions with the SQL that answered them, taught
# by a person's thumbs-up, kept per source by the session service (services/session/examples.py).

EXAMPLE_OPS = ("propose", "list", "approve", "delete", "similar", "flag")
ExampleStatus = Literal["pending", "approved"]
SourceName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
ExampleId = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{1,64}$")]
EXAMPLE_QUESTION_MAX_CHARS = 4000
EXAMPLE_NOTE_MAX_CHARS = 2000
EXAMPLE_SQL_MAX_CHARS = 8000
"""A longer query is not taught: it would crowd the model's context (LLM_EXAMPLES of them go into every turn like it)."""


class Example(msgspec.Struct, frozen=True, omit_defaults=True):
    """A verified example: `columns` are the result's column names when it was taught (`verify` compares them)."""

    id: str
    source: str
    question: str
    sql: str
    author: str
    status: ExampleStatus
    created_at: int
    """Milliseconds since the epoch."""
    columns: list[str] = []
    model: str | None = None
    conversation_id: str | None = None
    message_id: str | None = None
    approved_by: str | None = None
    note: str | None = None
    """What the person who gave the thumbs-up wrote with it, for the admin who approves it."""
    flag: str | None = None
    """Set by `examples verify` when the SQL now fails or its result has other columns; a flagged example is not used."""


class ExamplePropose(msgspec.Struct, frozen=True):
    """`session.examples.propose` request; reply ExampleReply. The same source, question and SQL make the same example."""

    source: SourceName
    question: Annotated[str, msgspec.Meta(min_length=1, max_length=EXAMPLE_QUESTION_MAX_CHARS)]
    sql: Annotated[str, msgspec.Meta(min_length=1, max_length=EXAMPLE_SQL_MAX_CHARS)]
    author: UserId
    approved: bool
    columns: list[str] = []
    model: str | None = None
    conversation_id: str | None = None
    message_id: str | None = None
    note: Annotated[str, msgspec.Meta(max_length=EXAMPLE_NOTE_MAX_CHARS)] | None = None


class ExampleRef(msgspec.Struct, frozen=True):
    """`session.examples.approve` / `delete` request; `by` is who approves."""

    source: SourceName
    id: ExampleId
    by: str | None = None


class ExampleFlag(msgspec.Struct, frozen=True):
    """`session.examples.flag` request: set (or, with None, clear) an example's flag."""

    source: SourceName
    id: ExampleId
    flag: str | None = None


class ExampleList(msgspec.Struct, frozen=True):
    """`session.examples.list` request: one source's examples, or every source's; reply ExamplesReply."""

    source: SourceName | None = None
    status: ExampleStatus | None = None


class ExampleSimilar(msgspec.Struct, frozen=True):
    """`session.examples.similar` request: the approved, unflagged examples of `source` most like `question`."""

    source: SourceName
    question: Annotated[str, msgspec.Meta(min_length=1, max_length=EXAMPLE_QUESTION_MAX_CHARS)]
    limit: Annotated[int, msgspec.Meta(ge=0, le=20)] = 3


class ExampleReply(msgspec.Struct, frozen=True):
    example: Example


class ExamplesReply(msgspec.Struct, frozen=True):
    examples: list[Example]


# --- users' own database connections (docs/connections.md) ------------------------------

QUERY_CONNECTION_OPS = ("create", "update", "test")
SESSION_CONNECTION_OPS = ("put", "get", "list", "delete", "scan")
CONNECTION_ID_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
CONNECTION_NAME_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
ConnectionId = Annotated[str, msgspec.Meta(pattern=CONNECTION_ID_PATTERN)]
ConnectionName = Annotated[str, msgspec.Meta(pattern=CONNECTION_NAME_PATTERN)]
Dialect = Literal["postgresql", "mysql"]
TlsMode = Literal["disable", "require", "verify-full"]
Host = Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
DbName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Password = Annotated[str, msgspec.Meta(max_length=1024)]


class ConnectionRef(msgspec.Struct, frozen=True):
    """One user's connection: only requests made for `owner` reach it."""

    owner: UserId
    id: ConnectionId


class ConnectionTls(msgspec.Struct, frozen=True, omit_defaults=True):
    """How to talk TLS to the database; `ca_pem` trusts that CA (else the system's) for verify-full."""

    mode: TlsMode = "require"
    ca_pem: Annotated[str, msgspec.Meta(max_length=65536)] | None = None


class ConnectionSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything needed to open a connection; the password in the clear travels only gateway -> query."""

    name: ConnectionName
    dialect: Dialect
    host: Host
    port: Port
    database: DbName
    user: DbName
    password: Password
    tls: ConnectionTls = ConnectionTls()


class ConnectionChanges(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A PATCH: the fields given replace the stored ones."""

    name: ConnectionName | msgspec.UnsetType = msgspec.UNSET
    host: Host | msgspec.UnsetType = msgspec.UNSET
    port: Port | msgspec.UnsetType = msgspec.UNSET
    database: DbName | msgspec.UnsetType = msgspec.UNSET
    user: DbName | msgspec.UnsetType = msgspec.UNSET
    password: Password | msgspec.UnsetType = msgspec.UNSET
    tls: ConnectionTls | msgspec.UnsetType = msgspec.UNSET


class ConnectionCreate(msgspec.Struct, frozen=True):
    """`query.connection.create`: test the settings, seal the password, store; reply ConnectionView."""

    owner: UserId
    settings: ConnectionSettings


class ConnectionUpdate(msgspec.Struct, frozen=True):
    """`query.connection.update`: apply `changes` (tested again unless only the name changes); reply ConnectionView."""

    ref: ConnectionRef
    changes: ConnectionChanges


class ConnectionTest(msgspec.Struct, frozen=True):
    """`query.connection.test`: open the stored connection and check its account; reply ConnectionTested."""

    ref: ConnectionRef


class ConnectionTested(msgspec.Struct, frozen=True):
    ok: bool
    server_version: str


class ConnectionView(msgspec.Struct, frozen=True):
    """What a user is shown of a connection: never the password, sealed or not."""

    id: str
    name: str
    dialect: str
    host: str
    port: int
    database: str
    user: str
    tls: ConnectionTls
    server_version: str
    created_at: str


class ConnectionRecord(msgspec.Struct, frozen=True):
    """A connection as the session service stores it: `sealed` is the AES-GCM password, opaque outside the query service."""

    id: ConnectionId
    owner: UserId
    name: ConnectionName
    dialect: Dialect
    host: Host
    port: Port
    database: DbName
    user: DbName
    tls: ConnectionTls
    server_version: str
    created_at: str
    key_id: str
    sealed: bytes

    def view(self) -> ConnectionView:
        return ConnectionView(self.id, self.name, self.dialect, self.host, self.port, self.database, self.user, self.tls, self.server_version, self.created_at)


class ConnectionPut(msgspec.Struct, frozen=True):
    """`session.connection.put`: store `record`; reply Ok, or `conflict`/`not_found`/`too_many`.

    `create`: a new id (refused past `max_per_user`); else it replaces a stored record,
    and, when `expect_sealed` is given, only if the stored blob is still that one.
    """

    record: ConnectionRecord
    create: bool
    max_per_user: Annotated[int, msgspec.Meta(ge=1)] = 10
    expect_sealed: bytes | None = None


class ConnectionGet(msgspec.Struct, frozen=True):
    """`session.connection.get`: reply ConnectionFound."""

    ref: ConnectionRef


class ConnectionFound(msgspec.Struct, frozen=True):
    record: ConnectionRecord | None = None


class ConnectionList(msgspec.Struct, frozen=True):
    """`session.connection.list`: one user's records, by name; reply ConnectionRecords."""

    owner: UserId


class ConnectionRecords(msgspec.Struct, frozen=True):
    records: list[ConnectionRecord]
    cursor: str | None = None


class ConnectionDelete(msgspec.Struct, frozen=True):
    """`session.connection.delete`: reply ConnectionDeleted; the service then broadcasts `query_connection_closed`."""

    ref: ConnectionRef


class ConnectionDeleted(msgspec.Struct, frozen=True):
    deleted: bool


class ConnectionScan(msgspec.Struct, frozen=True):
    """`session.connection.scan`: every user's records, a page at a time (key rotation); reply ConnectionRecords."""

    cursor: Annotated[str, msgspec.Meta(max_length=64)] = "0"
    count: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


# --- recent queries ------------------------------------------------------------------
# `session.recent.<op>` (queue "session"): the last RECENT_MAX queries a user ran per source,
# newest first, kept by the session service beside history (docs/session.md).

RECENT_OPS = ("add", "list")
RECENT_MAX = 50


class RecentAdd(msgspec.Struct, frozen=True):
    """`session.recent.add` request: `sql` is the user's newest query on `source` (a repeat moves to the top); reply Ok."""

    uid: UserId
    source: SourceName
    sql: Annotated[str, msgspec.Meta(min_length=1, max_length=100_000)]


class RecentList(msgspec.Struct, frozen=True):
    """`session.recent.list` request: the newest `limit` queries of the user on `source`; reply RecentQueries."""

    uid: UserId
    source: SourceName
    limit: Annotated[int, msgspec.Meta(ge=1, le=RECENT_MAX)] = RECENT_MAX


class RecentQuery(msgspec.Struct, frozen=True):
    sql: str
    at: int
    """When it was last run: milliseconds since the epoch."""


class RecentQueries(msgspec.Struct, frozen=True):
    """`session.recent.list` reply, newest first. `local` while Redis is down and this replica answers from its memory."""

    queries: list[RecentQuery]
    local: bool = False


# --- audit trail -----------------------------------------------------------------------
# Published by the gateway to the JetStream stream AUDIT_STREAM on `<prefix>.audit.<kind>`,
# each with a JetStream ack and its `id` as the Nats-Msg-Id, so that a retry is not a duplicate.

AUDIT_QUERY = "query"
AUDIT_SIGN_IN = "sign_in"
AUDIT_SIGN_OUT = "sign_out"
AUDIT_CONNECTION = "connection"
AUDIT_ERASURE = "erasure"
AuditOutcome = Literal["ok", "refused", "error", "cancelled", "timeout"]


class _AuditEvent(msgspec.Struct, frozen=True, tag_field="kind"):
    id: str
    """Unique per event: the JetStream message id."""
    time: float
    """Seconds since the epoch (the gateway's clock)."""
    user_id: str
    email: str | None = None
    request_id: str | None = None


class AuditQuery(_AuditEvent, tag=AUDIT_QUERY):
    """One query, from POST /api/query or the chat's execute_query (then with conversation, model and turn)."""

    source: str = ""
    role: str | None = None
    sql: str = ""
    outcome: AuditOutcome = "ok"
    reason: str | None = None
    """Why it was refused or failed: the error's message."""
    rows: int = 0
    bytes: int = 0
    duration_ms: float = 0.0
    conversation_id: str | None = None
    model: str | None = None
    turn: str | None = None
    """The assistant message id of the chat turn that ran it."""


class AuditSignIn(_AuditEvent, tag=AUDIT_SIGN_IN):
    """A session was opened (`method`: dev or id_token)."""

    method: str = ""


class AuditSignOut(_AuditEvent, tag=AUDIT_SIGN_OUT):
    """A session was closed by its user."""


class AuditConnection(_AuditEvent, tag=AUDIT_CONNECTION):
    """A user's own connection was created or deleted."""

    action: Literal["create", "delete"] = "create"
    source: str = ""
    """The connection's name: what the user names as a `source`."""
    connection_id: str = ""


class AuditErasure(_AuditEvent, tag=AUDIT_ERASURE):
    """Every conversation and session of `user_id` was erased (on request)."""

    by: str | None = None


AuditEvent = AuditQuery | AuditSignIn | AuditSignOut | AuditConnection | AuditErasure
AUDIT_DECODER: msgspec.msgpack.Decoder[AuditEvent] = msgspec.msgpack.Decoder(AuditEvent)
