"""What a source's database account may do beyond reading, asked of the database when the source opens.

The query service promises read-only access, and the guard and the read-only transaction
are our code. The account is the layer that does not depend on it: a source whose account
can write, touch server files, run programs or signal other sessions is refused (unless
QUERY_ALLOW_PRIVILEGED=1). See docs/query-account.md for reader roles that pass.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

DOCS = "docs/query-account.md"
# Findings named in an error message; the log line carries them all.
SHOWN_FINDINGS = 8

# PostgreSQL's predefined roles that reach beyond the database's rows.
POSTGRES_DANGEROUS_ROLES = (
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_execute_server_program",
    "pg_signal_backend",
    "pg_write_all_data",
)
_ROLE_ATTRIBUTES = (
    ("rolsuper", "superuser"),
    ("rolcreaterole", "CREATEROLE"),
    ("rolcreatedb", "CREATEDB"),
    ("rolreplication", "REPLICATION"),
    ("rolbypassrls", "BYPASSRLS"),
)
_KIND = "CASE c.relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table' ELSE 'table' END"
_USER_RELATIONS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'"

# Every role the account is, or can become (SET ROLE), directly or through other roles.
_PG_ROLES = """
SELECT r.rolname, r.rolname = current_user AS own, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls
FROM pg_roles r WHERE pg_has_role(current_user, r.oid, 'MEMBER') ORDER BY own DESC, r.rolname
"""
_PG_QUERIES: tuple[str, ...] = (
    # Owning an object lets a role alter, drop or grant it whatever the privileges say.
    f"""
    SELECT format('owner of %s %s', {_KIND}, c.oid::regclass) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND {_USER_RELATIONS} AND pg_has_role(current_user, c.relowner, 'MEMBER')
    ORDER BY 1
    """,
    """
    SELECT format('owner of schema %I', n.nspname) FROM pg_namespace n
    WHERE pg_has_role(current_user, n.nspowner, 'MEMBER') AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast%'
    ORDER BY 1
    """,
    """
    SELECT format('owner of database %I', datname) FROM pg_database
    WHERE datname = current_database() AND pg_has_role(current_user, datdba, 'MEMBER')
    """,
    f"""
    SELECT format('%s on %s %s', p.privilege, {_KIND}, c.oid::regclass)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    CROSS JOIN unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'TRIGGER']) AS p(privilege)
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {_USER_RELATIONS} AND has_table_privilege(c.oid, p.privilege)
    ORDER BY c.oid::regclass::text, p.privilege
    """,
    f"""
    SELECT format('%s on columns of %s %s', p.privilege, {_KIND}, c.oid::regclass)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace CROSS JOIN unnest(ARRAY['INSERT', 'UPDATE']) AS p(privilege)
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {_USER_RELATIONS}
      AND NOT has_table_privilege(c.oid, p.privilege) AND has_any_column_privilege(c.oid, p.privilege)
    ORDER BY 1
    """,
    f"""
    SELECT format('%s on sequence %s', p.privilege, c.oid::regclass)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace CROSS JOIN unnest(ARRAY['USAGE', 'UPDATE']) AS p(privilege)
    WHERE c.relkind = 'S' AND {_USER_RELATIONS} AND has_sequence_privilege(c.oid, p.privilege)
    ORDER BY 1
    """,
    """
    SELECT format('CREATE on schema %I', n.nspname) FROM pg_namespace n
    WHERE has_schema_privilege(n.oid, 'CREATE') AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast%'
    ORDER BY 1
    """,
    """
    SELECT format('CREATE on database %I', current_database()) WHERE has_database_privilege(current_database(), 'CREATE')
    """,
    """
    SELECT format('ADMIN OPTION on role %I', m.roleid::regrole) FROM pg_auth_members m
    WHERE m.admin_option AND pg_has_role(current_user, m.member, 'MEMBER')
    ORDER BY 1
    """,
    """
    SELECT format('owner of %s large object(s)', count(*)) FROM pg_largeobject_metadata
    WHERE pg_has_role(current_user, lomowner, 'MEMBER') HAVING count(*) > 0
    """,
)


@dataclass(frozen=True)
class Account:
    """Who a source connects as, and everything beyond reading that it may do (one phrase each)."""

    name: str
    findings: tuple[str, ...]


async def postgres_account(conn: Any) -> Account:
    """The account of `conn` (an asyncpg connection) and what it holds beyond reading."""
    name = await conn.fetchval("SELECT current_user")
    findings: list[str] = []
    for row in await conn.fetch(_PG_ROLES):
        through = "" if row["own"] else f" (through role {row['rolname']})"
        findings += [f"{label}{through}" for attribute, label in _ROLE_ATTRIBUTES if row[attribute]]
        if row["rolname"] in POSTGRES_DANGEROUS_ROLES:
            findings.append(f"member of {row['rolname']}")
    if "superuser" not in findings:  # a superuser holds everything: listing each table says no more
        for sql in _PG_QUERIES:
            findings += [row[0] for row in await conn.fetch(sql)]
    return Account(name, tuple(findings))


async def postgres_role_findings(conn: Any, role: str) -> list[str]:
    """Why `conn`'s account may not act as the ACCESS_POLICY role `role`: no such role, not granted, or it can do more than read."""
    user = await conn.fetchval("SELECT current_user")
    exists = await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", role)
    if not exists:
        return [f"role {role!r} does not exist"]
    if not await conn.fetchval("SELECT pg_has_role(current_user, $1, 'MEMBER')", role):
        return [f'role {role!r} is not granted to {user!r} (GRANT "{role}" TO "{user}")']
    async with conn.transaction(readonly=True):
        await conn.fetchrow("SELECT set_config('role', $1, true)", role)
        account = await postgres_account(conn)
    return [f"role {role!r}: {finding}" for finding in account.findings]


# --- MySQL / MariaDB ------------------------------------------------------------------------

MYSQL_ALLOWED = frozenset({"SELECT", "SHOW VIEW", "USAGE"})
_PRIVILEGE_LINE = re.compile(r"^GRANT\s+(?P<privileges>.+?)\s+ON\s+(?P<object>.+?)\s+TO\s+(?P<grantee>\S+)(?P<rest>.*)$", re.S)
_ROLE_LINE = re.compile(r"^GRANT\s+(?P<roles>[`'].*?)\s+TO\s+(?P<grantee>\S+)(?P<rest>.*)$", re.S)
_GRANT_OPTION = re.compile(r"\bWITH\b.*\bGRANT\s+OPTION\b", re.S | re.I)
_ADMIN_OPTION = re.compile(r"\bWITH\s+ADMIN\s+OPTION\b", re.I)


@dataclass(frozen=True)
class Grant:
    """One privilege (or role) granted to one grantee, as SHOW GRANTS writes it."""

    privilege: str
    on: str
    grantee: str


def parse_grants(lines: Iterable[str]) -> tuple[list[Grant], list[str]]:
    """SHOW GRANTS output as (privilege grants, granted role names); other lines are ignored."""
    grants: list[Grant] = []
    roles: list[str] = []
    for line in lines:
        line = line.strip()
        if not line.upper().startswith("GRANT "):
            continue  # SET DEFAULT ROLE ..., CREATE USER ...
        role_match = _ROLE_LINE.match(line)
        if role_match:  # a role name is always quoted; a privilege never is
            names = [_unquote(name) for name in _split_top_level(role_match["roles"])]
            roles += names
            if _ADMIN_OPTION.search(role_match["rest"]):
                grants += [Grant("ADMIN OPTION", f"role {name}", _unquote(role_match["grantee"])) for name in names]
            continue
        match = _PRIVILEGE_LINE.match(line)
        if match is None:
            grants.append(Grant(f"unrecognised grant {line!r}", "", ""))
            continue
        grantee = _unquote(match["grantee"])
        for privilege in _split_top_level(match["privileges"]):
            grants.append(Grant(re.sub(r"\s*\(.*\)\s*$", "", privilege, flags=re.S).upper(), match["object"], grantee))
        if _GRANT_OPTION.search(match["rest"]):
            grants.append(Grant("GRANT OPTION", match["object"], grantee))
    return grants, roles


def mysql_findings(grants: Sequence[Grant], user: str) -> list[str]:
    """The grants that go beyond SELECT and SHOW VIEW, one phrase each (named with the role that brings them)."""
    findings: list[str] = []
    for grant in grants:
        if grant.privilege in MYSQL_ALLOWED:
            continue
        through = "" if _same_account(grant.grantee, user) or not grant.grantee else f" (through role {grant.grantee})"
        phrase = f"{grant.privilege} ON {grant.on}" if grant.on else grant.privilege
        findings.append(phrase + through)
    return list(dict.fromkeys(findings))


async def mysql_role_findings(conn: Any, role: str) -> list[str]:
    """Why `conn`'s account may not act as the ACCESS_POLICY role `role`: not granted to it, or it holds more than SELECT and SHOW VIEW."""
    async with conn.cursor() as cur:
        await cur.execute("SELECT CURRENT_USER()")
        user = (await cur.fetchone())[0]
        try:
            await cur.execute(f"SET ROLE {quote_role(role)}")
        except Exception as exc:  # ER_INVALID_ROLE and friends: not granted, or no such role
            return [f"role {role!r} is not granted to {user!r} ({exc.args[-1] if exc.args else type(exc).__name__})"]
        try:
            await cur.execute("SHOW GRANTS")
            grants, _ = parse_grants(row[0] for row in await cur.fetchall())
        finally:
            await cur.execute("SET ROLE NONE")
    # SHOW GRANTS under a role lists the account's grants and the role's: keep the role's.
    return [f"role {role!r}: {finding}" for finding in mysql_findings([g for g in grants if not _same_account(g.grantee, user)], user)]


async def mysql_account(conn: Any) -> Account:
    """The account of `conn` (an asyncmy connection) and what it holds beyond SELECT and SHOW VIEW."""
    grants, user = await mysql_grants(conn)
    return Account(user, tuple(mysql_findings(grants, user)))


async def mysql_grants(conn: Any) -> tuple[list[Grant], str]:
    """Every grant of the account of `conn`, its roles' included: (grants, user).

    SHOW GRANTS FOR a role needs the role active, so each role granted to the account is
    switched on in turn (SET ROLE), which also shows the roles granted to it. Leaves the
    session with no role set; the caller closes or resets the connection.
    """
    async with conn.cursor() as cur:
        await cur.execute("SELECT CURRENT_USER()")
        user = (await cur.fetchone())[0]
        await cur.execute("SHOW GRANTS FOR CURRENT_USER")
        lines = [row[0] for row in await cur.fetchall()]
        grants, direct_roles = parse_grants(lines)
        seen: set[str] = set()
        for role in direct_roles:
            if role in seen:
                continue
            seen.add(role)
            await cur.execute(f"SET ROLE {quote_role(role)}")
            await cur.execute("SHOW GRANTS")
            role_grants, nested = parse_grants(row[0] for row in await cur.fetchall())
            grants += role_grants
            seen.update(nested)
        if direct_roles:
            await cur.execute("SET ROLE NONE")
        try:
            await cur.execute("SHOW GRANTS FOR PUBLIC")  # MariaDB 10.11+: what every account has
        except Exception:  # older servers and MySQL have no PUBLIC role
            pass
        else:
            grants += [Grant(g.privilege, g.on, "PUBLIC") for g in parse_grants(row[0] for row in await cur.fetchall())[0]]
    return grants, user


def _same_account(grantee: str, user: str) -> bool:
    return grantee.replace("`", "").replace("'", "") == user.replace("`", "").replace("'", "")


def _unquote(name: str) -> str:
    name = name.strip()
    return "".join(part.strip("`'") for part in re.split(r"(@)", name))


def quote_role(role: str) -> str:
    """A role name for SET ROLE: `name`, or `name`@`host` for MySQL 8's roles."""
    return "@".join("`" + part.replace("`", "``") + "`" for part in role.split("@", 1))


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses and quotes: 'SELECT (`a`, `b`), INSERT' -> ['SELECT (`a`, `b`)', 'INSERT']."""
    parts: list[str] = []
    current: list[str] = []
    depth, quote = 0, ""
    for char in text:
        if quote:
            if char == quote:
                quote = ""
        elif char in "`'\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


# --- the message ----------------------------------------------------------------------------


def refusal_message(source: str, account: str, findings: Sequence[str]) -> str:
    shown = "; ".join(findings[:SHOWN_FINDINGS])
    more = f"; and {len(findings) - SHOWN_FINDINGS} more" if len(findings) > SHOWN_FINDINGS else ""
    if any(finding.startswith("role ") for finding in findings):
        return (
            f"source {source!r} is not served: its database account {account!r} cannot safely take every role ACCESS_POLICY names for it ({shown}{more}). "
            f"Name only roles granted to the account that may only read (see docs/access.md)"
        )
    return (
        f"source {source!r} is not served: its database account {account!r} can do more than read ({shown}{more}). "
        f"Connect it as a reader role (see {DOCS}), or set QUERY_ALLOW_PRIVILEGED=1 to serve it anyway"
    )
