"""The first read-only layer: parse the SQL with sqlglot and refuse anything but one side-effect-free query.

The database layer (a reader role, read-only transactions, a read-only SQLite handle) is the
second layer; this one exists so that refusals are early and clear, and so that what a
read-only transaction still allows (signalling backends, advisory locks, file reads, SQL run
from a string) is refused too. It allows rather than denies: every function a query calls
must pass the source's FunctionPolicy (guard/policy.py), and SQL that sqlglot cannot read
exactly as the server does is refused as "cannot analyse", never guessed at.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

import sqlglot
import sqlglot.errors
import structlog
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.parser import Parser
from sqlglot.tokens import Token, TokenType

from services.query.guard.activity import check_activity_views
from services.query.guard.lexing import CANNOT_ANALYSE, cannot_analyse, normalize_mysql, normalize_postgres, postgres_name
from services.query.guard.policy import (
    MYSQL_SYNTAX_CALLS,
    PG_SYNTAX_CALLS,
    CallsOnly,
    FunctionName,
    FunctionPolicy,
    MysqlPolicy,
    PgCatalog,
    PgPolicy,
    SqlitePolicy,
)
from services.query.guard.sizes import check_value_sizes
from shared.errors import BAD_REQUEST, QUERY_FAILED, QUERY_REFUSED, ServiceError

__all__ = ["FunctionName", "FunctionPolicy", "MysqlPolicy", "PgCatalog", "PgPolicy", "SqlitePolicy", "check_read_only", "default_policy", "describe"]

log = structlog.get_logger(__name__)

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

# Each server's own tokenisation, before sqlglot's (guard/lexing.py); SQLite's is sqlglot's.
_LEXERS = {"postgres": normalize_postgres, "mysql": normalize_mysql}

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_DIALECT_NAMES = {"postgres": "PostgreSQL", "mysql": "MySQL/MariaDB", "sqlite": "SQLite"}

# Words that are grammar when a parenthesis follows them (IN (…), OVER (…), AS (…), …).
_GRAMMAR_WORDS = frozenset(
    """
    in exists values as on using over filter from join where and or not select all any some array row cast within
    group by partition order lateral union intersect except when then else case between like ilike is having limit
    offset distinct with recursive materialized returning rollup cube sets tablesample repeatable table only window
    rows range groups ordinality similar to escape at zone collate operator interval div regexp rlike match against
    mode natural straight_join fetch first next percent ties for both leading trailing placing passing columns path
    default asc desc last nulls symmetric asymmetric current preceding following unbounded exclude end null true false
    year month day hour minute second
    """.split()
) | {"partition by", "group by", "order by", "grouping sets", "within group", "union all", "distinct on", "cluster by", "sort by"}
# PostgreSQL's reserved keywords: unquoted, one of these before `(` is never a function call.
_PG_RESERVED = frozenset(
    """
    all analyse analyze and any array as asc asymmetric both case cast check collate column constraint create
    current_catalog current_date current_role current_time current_timestamp current_user default deferrable desc
    distinct do else end except false fetch for foreign from grant group having in initially intersect into lateral
    leading limit localtime localtimestamp not null offset on only or order placing primary references returning
    select session_user some symmetric table then to trailing true union unique user using variadic when where
    window with
    """.split()
)
_NAME_TOKENS = (TokenType.VAR, TokenType.IDENTIFIER)
_WORD_TEXT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$ ]*$")
_OPERATOR_CHARS = frozenset("+-*/<>=~!@#%^&|`?")
_TABLESAMPLE_METHODS = frozenset({"bernoulli", "system"})


def check_read_only(sql: str, dialect: str, policy: FunctionPolicy | None = None, max_value_bytes: int | None = None, *, allow_activity_views: bool = False) -> None:
    """Raise ServiceError unless `sql` is exactly one read-only query in `dialect` whose every call `policy` allows.

    `dialect` is a sqlglot dialect name: "postgres", "mysql" or "sqlite". Without a policy,
    PostgreSQL allows no function (its policy comes from the source's catalog), MySQL the
    reviewed built-ins and SQLite all but its file-system extensions. With `max_value_bytes`
    (QUERY_MAX_CELL_BYTES), a value builder whose literal arguments make a larger value is
    refused too (guard/sizes.py). Views of other sessions' SQL are refused unless
    `allow_activity_views` (guard/activity.py).
    """
    if policy is None:
        policy = default_policy(dialect)
    text = _LEXERS[dialect](sql) if dialect in _LEXERS else sql
    grammar = Dialect.get_or_raise(dialect)
    try:
        tokens = grammar.tokenize(text)
        statements = [s for s in grammar.parser().parse(tokens, text) if s is not None]
    # The parser failing is QUERY_FAILED, as a syntax error was: most often the SQL is simply invalid.
    except sqlglot.errors.ParseError as exc:
        raise ServiceError(QUERY_FAILED, _unreadable_message(exc, dialect)) from None
    except sqlglot.errors.TokenError as exc:
        raise ServiceError(QUERY_FAILED, f"{CANNOT_ANALYSE} ({_DIALECT_NAMES[dialect]}): {_clean(str(exc))}") from None
    except RecursionError:
        raise ServiceError(QUERY_REFUSED, "the query is nested too deeply to be checked") from None
    except Exception as exc:  # sqlglot's own failure on some input: still a refusal, never a 500
        log.warning("guard_parser_failed", dialect=dialect, error=f"{type(exc).__name__}: {exc}"[:300])
        raise ServiceError(QUERY_REFUSED, f"{CANNOT_ANALYSE} ({_DIALECT_NAMES[dialect]}): the parser failed on it") from None
    if not statements:
        raise ServiceError(BAD_REQUEST, "the SQL holds no statement")
    if len(statements) > 1:
        kinds = ", ".join(describe(s) for s in statements)
        raise ServiceError(QUERY_REFUSED, f"{_ONLY_ONE}: found {len(statements)} statements ({kinds})")
    statement = statements[0]
    if isinstance(statement, exp.Command):
        raise ServiceError(QUERY_REFUSED, f"{_ONLY_ONE}: found {describe(statement)}, a statement the guard does not analyse")
    if not isinstance(statement, _QUERY_ROOTS):
        # sqlglot reads some statements it does not know (LISTEN x) as an expression: name the first word.
        what = describe(statement) if isinstance(statement, _REFUSED_NODES) else tokens[0].text.upper()
        raise ServiceError(QUERY_REFUSED, f"{_ONLY_ONE}: found {what}")
    for node in statement.walk():
        if isinstance(node, _REFUSED_NODES):
            raise ServiceError(QUERY_REFUSED, f"{_ONLY_ONE}: found {describe(node)}")
        if dialect == "mysql" and isinstance(node, exp.PropertyEQ):
            raise ServiceError(QUERY_REFUSED, f"{_ONLY_ONE}: found a variable assignment (:=)")
    if not allow_activity_views:
        check_activity_views(tokens, dialect, lambda token: _name(token, dialect)[0])
    _check_calls(statement, tokens, dialect, policy)
    if max_value_bytes is not None:
        check_value_sizes(statement, max_value_bytes)


def default_policy(dialect: str, allowed: Iterable[FunctionName] = ()) -> FunctionPolicy:
    """The policy of a source that has no catalog of its own (all but PostgreSQL), with the operator's additions."""
    if dialect == "mysql":
        return MysqlPolicy(allowed)
    if dialect == "sqlite":
        return SqlitePolicy()
    return _NoFunctions()


class _NoFunctions(CallsOnly):
    """For a PostgreSQL source whose catalog is not known: no function may run."""

    def refusal(self, schema: str | None, name: str) -> str | None:
        return f"the function {schema + '.' if schema else ''}{name}() cannot be checked: the source's function catalog is not loaded"


def _name(token: Token, dialect: str) -> tuple[str, bool]:
    quoted = token.token_type == TokenType.IDENTIFIER
    if dialect == "postgres":
        return postgres_name(token.text, quoted), quoted
    return token.text.lower(), quoted


def _check_calls(statement: exp.Expression, tokens: list[Token], dialect: str, policy: FunctionPolicy) -> None:
    """Every `name(` in the token stream is a call to check, unless the server reads it as grammar.

    What sqlglot calls a token (a keyword, a type, JSON or collation syntax) does not decide
    it: a name is grammar only when the server's own keywords say so (`policy.grammar`), or
    when it looks like grammar and no function of that name exists (`policy.knows`).
    """
    alias_starts = {node.meta["start"] for node in statement.find_all(exp.Identifier) if isinstance(node.parent, exp.TableAlias) and "start" in node.meta}
    relations = _relations(statement, dialect)
    derived = _derived_columns(statement, dialect)
    count = len(tokens)
    run: list[Token] = []
    for i, token in enumerate(tokens):
        # Operators: adjacent operator characters form one PostgreSQL operator name.
        if token.text and set(token.text) <= _OPERATOR_CHARS:
            if run and run[-1].end + 1 != token.start:
                _check_operator(run, policy)
                run = []
            run.append(token)
            continue
        if run:
            _check_operator(run, policy)
            run = []
        name, quoted = _name(token, dialect)
        if dialect == "postgres" and token.token_type in _NAME_TOKENS:
            reason = policy.type_refusal(name)
            if reason:
                raise ServiceError(QUERY_REFUSED, f"the type {name} is not allowed: {reason}")
        before = tokens[i - 1].token_type if i > 0 else None
        calls = i + 1 < count and tokens[i + 1].token_type == TokenType.L_PAREN
        if before == TokenType.DOT and not calls:
            qualifier = _name(tokens[i - 2], dialect)[0] if i >= 2 and tokens[i - 2].token_type in _NAME_TOKENS else None
            if qualifier is not None and name in derived.get(qualifier, ()):
                continue  # a column of a subquery or CTE the query names
            reason = policy.attribute_refusal(name, relations.get(qualifier) if qualifier else None)
            if reason:
                raise ServiceError(QUERY_REFUSED, reason)
            continue
        if not calls:
            continue
        if before == TokenType.DOT:
            if i < 2:
                raise cannot_analyse(f"a call to .{name}() without a schema")
            schema, _ = _name(tokens[i - 2], dialect)
            _refuse_unless_allowed(policy, schema, name)
            continue
        word = token.token_type in _NAME_TOKENS or bool(_WORD_TEXT.match(token.text))
        if not word or token.start in alias_starts:
            continue  # punctuation such as `, (` or `) (`, or an alias's column list
        if before == TokenType.TABLE_SAMPLE:
            if name not in _TABLESAMPLE_METHODS:
                raise ServiceError(QUERY_REFUSED, f"the TABLESAMPLE method {name} is not allowed (only BERNOULLI and SYSTEM)")
            continue
        if not quoted and _is_grammar(tokens, i, name, dialect, policy):
            continue
        _refuse_unless_allowed(policy, None, name)
    if run:
        _check_operator(run, policy)


def _is_grammar(tokens: list[Token], i: int, name: str, dialect: str, policy: FunctionPolicy) -> bool:
    """Whether the unquoted `name (` at `i` is grammar to the server (see `_check_calls`)."""
    if name == "repeatable" and _after_tablesample(tokens, i):
        return True
    before = tokens[i - 1].token_type if i > 0 else None
    if before in (TokenType.R_PAREN, TokenType.STRING):
        # No call can follow a value directly: `count(*) FILTER (`, `OVER (`, `MATCH (a) AGAINST (`,
        # `interval '1' second(3)`, JSON_TABLE's `'$' COLUMNS (`.
        return True
    looks_like_grammar = tokens[i].token_type not in _NAME_TOKENS or name in _GRAMMAR_WORDS or name in _syntax_calls(dialect) or _is_type_modifier(tokens, i)
    if dialect == "mysql":
        # A stored function may take any name but a reserved word or a type (`DATETIME(6)`); native functions are checked by name.
        return _is_type_modifier(tokens, i) or (looks_like_grammar and policy.grammar(name))
    if policy.grammar(name) or (dialect == "postgres" and name in _PG_RESERVED):
        return True
    return looks_like_grammar and not policy.knows(name)


def _derived_columns(statement: exp.Expression, dialect: str) -> dict[str, frozenset[str]]:
    """The output columns of each aliased subquery and CTE whose select list names them all (no `*`)."""
    found: dict[str, frozenset[str]] = {}
    for node in (*statement.find_all(exp.Subquery), *statement.find_all(exp.CTE)):
        query, alias = node.this, node.args.get("alias")
        if alias is None or not isinstance(alias.this, exp.Identifier) or not isinstance(query, exp.Select) or alias.columns:
            continue
        if any(isinstance(e, exp.Star) or isinstance(e, exp.Column) and isinstance(e.this, exp.Star) for e in query.expressions):
            continue
        names = [_identifier_name(e.args["alias"] if isinstance(e, exp.Alias) else e.this, dialect) for e in query.expressions if isinstance(e, (exp.Alias, exp.Column))]
        key = _identifier_name(alias.this, dialect)
        found[key] = found[key] & frozenset(names) if key in found else frozenset(names)
    ctes = {cte.alias_or_name for cte in statement.find_all(exp.CTE)}
    for table in statement.find_all(exp.Table):  # a table of the same name elsewhere: not sure which one `x.` means
        alias = table.args.get("alias")
        if alias is None and table.name in ctes:
            continue
        found.pop(_identifier_name(alias.this if alias is not None else table.this, dialect), None)
    return found


def _identifier_name(ident: exp.Expression, dialect: str) -> str:
    if not isinstance(ident, exp.Identifier):
        return ""
    quoted = bool(ident.args.get("quoted"))
    return postgres_name(ident.name, quoted) if dialect == "postgres" else ident.name.lower()


def _relations(statement: exp.Expression, dialect: str) -> dict[str, str]:
    """Names a query uses for its tables (alias, or the table's own name), each mapped to the table; CTEs left out."""
    ctes = {cte.alias_or_name for cte in statement.find_all(exp.CTE)}
    found: dict[str, str | None] = {}
    for table in statement.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier) or table.name in ctes:
            continue
        key = table.alias_or_name
        if dialect == "postgres":
            alias = table.args.get("alias")
            ident = alias.this if alias is not None and isinstance(alias.this, exp.Identifier) else table.this
            key = postgres_name(ident.name, bool(ident.args.get("quoted")))
            relation = postgres_name(table.this.name, bool(table.this.args.get("quoted")))
        else:
            relation = table.name
        found[key] = relation if found.get(key, relation) == relation else None
    return {k: v for k, v in found.items() if v is not None}


def _syntax_calls(dialect: str) -> frozenset[str]:
    return PG_SYNTAX_CALLS if dialect == "postgres" else MYSQL_SYNTAX_CALLS if dialect == "mysql" else frozenset()


def _after_tablesample(tokens: list[Token], i: int) -> bool:
    """`TABLESAMPLE method (…) REPEATABLE (…)`: the REPEATABLE at `i` follows a TABLESAMPLE clause."""
    j, depth = i - 1, 0
    while j >= 0:
        kind = tokens[j].token_type
        depth += kind == TokenType.R_PAREN
        depth -= kind == TokenType.L_PAREN
        if depth == 0:
            break
        j -= 1
    return j >= 2 and tokens[j - 2].token_type == TokenType.TABLE_SAMPLE


def _is_type_modifier(tokens: list[Token], i: int) -> bool:
    """`numeric(10, 2)`, `varchar(3)`: a type keyword with numbers in parentheses."""
    if tokens[i].token_type not in Parser.TYPE_TOKENS:
        return False
    j = i + 2
    while j < len(tokens) and tokens[j].token_type in (TokenType.NUMBER, TokenType.COMMA):
        j += 1
    return j < len(tokens) and tokens[j].token_type == TokenType.R_PAREN and j > i + 2


def _refuse_unless_allowed(policy: FunctionPolicy, schema: str | None, name: str) -> None:
    reason = policy.refusal(schema, name)
    if reason:
        raise ServiceError(QUERY_REFUSED, reason)


def _check_operator(run: list[Token], policy: FunctionPolicy) -> None:
    reason = policy.operator_refusal("".join(t.text for t in run))
    if reason:
        raise ServiceError(QUERY_REFUSED, reason)


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


def _unreadable_message(exc: sqlglot.errors.ParseError, dialect: str) -> str:
    """sqlglot could not parse it: either not valid SQL, or valid SQL the guard does not understand; say both."""
    where = _DIALECT_NAMES.get(dialect, dialect)
    tail = f"; it is either not valid {where} SQL or uses syntax the guard does not understand"
    if not exc.errors:
        return f"{CANNOT_ANALYSE} ({where}): {_clean(str(exc))}{tail}"
    first = exc.errors[0]
    description = _clean(str(first.get("description") or "invalid SQL"))
    near = (_clean(str(first.get("start_context") or ""))[-30:] + " " + _clean(str(first.get("highlight") or ""))).strip()
    message = f"{CANNOT_ANALYSE} ({where}): at line {first.get('line')}, column {first.get('col')}: {description}"
    if near:
        message += f", near {near[:60]!r}"
    return message + tail


def _clean(text: str) -> str:
    return _ANSI.sub("", text).strip()[:300]
