"""Views of other sessions' SQL (pg_stat_activity, the MySQL/MariaDB processlists): refused unless
QUERY_ALLOW_ACTIVITY_VIEWS=1, since every user's statements may run on one database account.

Checked on the token stream, so that a name is caught wherever it stands (a table, a function,
quoted, schema-qualified, in a subquery); a column or alias that happens to share such a name is
refused too, which costs little.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot.tokens import Token, TokenType

from shared.errors import QUERY_REFUSED, ServiceError

# PostgreSQL: the activity view, the functions behind it, and pg_stat_statements (every user's SQL).
_POSTGRES = frozenset(
    {
        "pg_stat_activity",
        "pg_stat_get_activity",
        "pg_stat_get_backend_activity",
        "pg_stat_get_backend_pid",
        "pg_stat_get_backend_idset",
        "pg_stat_get_backend_userid",
        "pg_stat_get_backend_client_addr",
        "pg_stat_statements",
        "pg_stat_statements_info",
        "pg_stat_replication",
        "pg_stat_wal_receiver",
    }
)
# MySQL/MariaDB: anything named processlist, the statement-event tables, threads, and sys's session views.
_MYSQL = frozenset(
    {
        "processlist", "x$processlist", "session", "x$session", "threads", "events_statements_current",
        "events_statements_history", "events_statements_history_long", "events_transactions_current",
        "prepared_statements_instances", "session_connect_attrs",
    }
)  # fmt: skip
_MYSQL_ANYWHERE = frozenset({"processlist", "x$processlist", "events_statements_current", "events_statements_history", "events_statements_history_long"})
_MYSQL_SCHEMAS = frozenset({"performance_schema", "sys", "information_schema"})
_NAMES = (TokenType.VAR, TokenType.IDENTIFIER)

MESSAGE = "views of other sessions' SQL ({name}) are not allowed; the operator may set QUERY_ALLOW_ACTIVITY_VIEWS=1"


def check_activity_views(tokens: list[Token], dialect: str, name_of: Callable[[Token], str]) -> None:
    """Raise query_refused when the statement names an activity view or function of `dialect`."""
    if dialect == "sqlite":
        return
    for i, token in enumerate(tokens):
        if token.token_type not in _NAMES and not token.text.replace("_", "").replace("$", "").isalnum():
            continue
        name = name_of(token)
        if dialect == "postgres":
            if name in _POSTGRES:
                raise ServiceError(QUERY_REFUSED, MESSAGE.format(name=name))
            continue
        if name in _MYSQL_ANYWHERE:
            raise ServiceError(QUERY_REFUSED, MESSAGE.format(name=name))
        if name in _MYSQL and i >= 2 and tokens[i - 1].token_type == TokenType.DOT and name_of(tokens[i - 2]) in _MYSQL_SCHEMAS:
            raise ServiceError(QUERY_REFUSED, MESSAGE.format(name=f"{name_of(tokens[i - 2])}.{name}"))
