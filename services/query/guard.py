"""The first read-only layer: parse the SQL with sqlglot and refuse anything but one side-effect-free query.

The database layer (read-only transactions, a read-only SQLite handle) is the second layer;
this one exists so that refusals are early and clear, and so that things a read-only
transaction still allows (session settings, advisory locks, file reads) are refused too.
"""

from __future__ import annotations

import logging
import re

import sqlglot
import sqlglot.errors
from sqlglot import exp

from shared.errors import BAD_REQUEST, QUERY_FAILED, QUERY_REFUSED, ServiceError

# sqlglot logs a warning for every statement it can only parse as an opaque Command;
# we refuse those anyway, with our own message.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

_ONLY_ONE = "only a single read-only statement is allowed"

# Query roots that read and nothing else (a WITH clause hangs off its main query).
_QUERY_ROOTS = (exp.Select, exp.SetOperation, exp.Subquery, exp.Values)

# Nodes that write, change the session or transaction, or take locks, wherever they are
# in the tree (a DELETE inside a CTE is as much a write as one at the top).
_REFUSED_NODES: tuple[type[exp.Expression], ...] = (
    exp.DDL,
    exp.DML,
    exp.Drop,
    exp.Alter,
    exp.TruncateTable,
    exp.Command,
    exp.Set,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
    exp.Into,
    exp.Lock,
    exp.Pragma,
    exp.Attach,
    exp.Detach,
    exp.Use,
    exp.Grant,
    exp.Revoke,
    exp.LoadData,
    exp.Analyze,
    exp.Kill,
    exp.Refresh,
    exp.Cache,
    exp.Uncache,
    exp.Comment,
    exp.Declare,
    exp.Describe,
    exp.Show,
)

# Functions with side effects that a read-only transaction does not stop (or that read
# server files, take session locks, or reach other servers). Exact names and prefixes.
_DENIED_FUNCTIONS: dict[str, frozenset[str]] = {
    "postgres": frozenset(
        {
            "set_config",
            "nextval",
            "setval",
            "txid_current",
            "pg_current_xact_id",
            "pg_notify",
            "pg_cancel_backend",
            "pg_terminate_backend",
            "pg_reload_conf",
            "pg_rotate_logfile",
            "pg_switch_wal",
            "pg_promote",
            "pg_create_restore_point",
            "pg_backup_start",
            "pg_backup_stop",
            "pg_start_backup",
            "pg_stop_backup",
            "pg_stat_reset",
            "pg_file_write",
            "pg_file_rename",
            "pg_file_unlink",
            "pg_import_system_collations",
            "pg_logical_emit_message",
            "query_to_xml",
            "query_to_xmlschema",
            "query_to_xml_and_xmlschema",
            "cursor_to_xml",
            "cursor_to_xmlschema",
        }
    ),
    "mysql": frozenset(
        {
            "get_lock",
            "release_lock",
            "release_all_locks",
            "load_file",
            "master_pos_wait",
            "master_gtid_wait",
            "source_pos_wait",
            "nextval",
            "setval",
            "lastval",
            "sys_exec",
            "sys_eval",
        }
    ),
    "sqlite": frozenset({"load_extension", "writefile", "readfile", "edit", "fts3_tokenizer"}),
}
_DENIED_PREFIXES: dict[str, tuple[str, ...]] = {
    "postgres": (
        "lo_",
        "dblink",
        "pg_read_",
        "pg_ls_",
        "pg_stat_file",
        "pg_advisory",
        "pg_try_advisory",
        "pg_create_",
        "pg_drop_",
        "pg_replication_",
        "pg_logical_",
        "pg_wal_replay_",
        "pg_stat_reset",
    ),
    "mysql": (),
    "sqlite": (),
}

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def check_read_only(sql: str, dialect: str) -> None:
    """Raise ServiceError unless `sql` is exactly one read-only query in `dialect`.

    `dialect` is a sqlglot dialect name: "postgres", "mysql" or "sqlite".
    """
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except sqlglot.errors.ParseError as exc:
        raise ServiceError(QUERY_FAILED, _syntax_message(exc, dialect)) from None
    except sqlglot.errors.TokenError as exc:
        raise ServiceError(QUERY_FAILED, f"syntax error ({_DIALECT_NAMES[dialect]}): {_clean(str(exc))}") from None
    except RecursionError:
        raise ServiceError(QUERY_REFUSED, "the query is nested too deeply to be checked") from None
    if not statements:
        raise ServiceError(BAD_REQUEST, "the SQL holds no statement")
    if len(statements) > 1:
        kinds = ", ".join(describe(s) for s in statements)
        raise ServiceError(QUERY_REFUSED, f"{_ONLY_ONE}: found {len(statements)} statements ({kinds})")
    statement = statements[0]
    if not isinstance(statement, _QUERY_ROOTS):
        raise ServiceError(QUERY_REFUSED, f"{_ONLY_ONE}: found {describe(statement)}")
    denied = _DENIED_FUNCTIONS.get(dialect, frozenset())
    prefixes = _DENIED_PREFIXES.get(dialect, ())
    for node in statement.walk():
        if isinstance(node, _REFUSED_NODES):
            raise ServiceError(QUERY_REFUSED, f"{_ONLY_ONE}: found {describe(node)}")
        if dialect == "mysql" and isinstance(node, exp.PropertyEQ):
            raise ServiceError(QUERY_REFUSED, f"{_ONLY_ONE}: found a variable assignment (:=)")
        if isinstance(node, exp.Func):
            name = _function_name(node)
            if name in denied or name.startswith(prefixes):
                raise ServiceError(QUERY_REFUSED, f"{_ONLY_ONE}: the function {name}() has side effects and is not allowed")


def describe(node: exp.Expression) -> str:
    """A short SQL-ish name for a statement or clause, for refusal messages."""
    if isinstance(node, exp.Command):
        return str(node.this).upper()
    if isinstance(node, (exp.Create, exp.Drop, exp.Alter)):
        verb = type(node).__name__.upper()
        kind = node.args.get("kind")
        return f"{verb} {str(kind).upper()}" if kind else verb
    if isinstance(node, exp.Into):
        return "SELECT INTO"
    if isinstance(node, exp.Lock):
        return "FOR UPDATE" if node.args.get("update") else "a locking clause (FOR SHARE / LOCK IN SHARE MODE)"
    if isinstance(node, exp.Transaction):
        return "BEGIN"
    if isinstance(node, exp.TruncateTable):
        return "TRUNCATE"
    if isinstance(node, exp.LoadData):
        return "LOAD DATA"
    if isinstance(node, exp.SetOperation):
        return type(node).__name__.upper()
    return type(node).__name__.upper()


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    return node.sql_name().lower()


_DIALECT_NAMES = {"postgres": "PostgreSQL", "mysql": "MySQL/MariaDB", "sqlite": "SQLite"}


def _syntax_message(exc: sqlglot.errors.ParseError, dialect: str) -> str:
    where = _DIALECT_NAMES.get(dialect, dialect)
    if not exc.errors:
        return f"syntax error ({where}): {_clean(str(exc))}"
    first = exc.errors[0]
    description = _clean(str(first.get("description") or "invalid SQL"))
    near = (_clean(str(first.get("start_context") or ""))[-30:] + " " + _clean(str(first.get("highlight") or ""))).strip()
    message = f"syntax error ({where}) at line {first.get('line')}, column {first.get('col')}: {description}"
    return f"{message}, near {near[:60]!r}" if near else message


def _clean(text: str) -> str:
    return _ANSI.sub("", text).strip()[:300]
