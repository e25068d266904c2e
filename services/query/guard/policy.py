"""Which functions a query may call, per engine: the allow rule and the reviewed lists behind it.

PostgreSQL asks the database (`PgCatalog.load`, when a source's pool opens): a name is
allowed when every function it can resolve to is IMMUTABLE or STABLE (aggregates: every
support function too), written in C or internal code or shipped in pg_catalog, and not a
type I/O function; plus a reviewed list of harmless VOLATILE built-ins; minus a reviewed
list of functions that run SQL given as text, touch files, signal backends or keep state
beyond the query, whatever their label. MySQL/MariaDB has no such catalog of built-ins, so
it allows a reviewed list of them. `QUERY_ALLOWED_FUNCTIONS` adds an operator's own
functions to either (never one on the deny lists). docs/query-guard.md explains each list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

# (schema or None, name): a function an operator allows for one source (QUERY_ALLOWED_FUNCTIONS).
FunctionName = tuple[str | None, str]


class FunctionPolicy(Protocol):
    """Says whether a query may call a function, and if not, why."""

    def refusal(self, schema: str | None, name: str) -> str | None:
        """None when `schema.name(…)` (or `name(…)` when schema is None) may run; else the reason, naming it."""

    def attribute_refusal(self, name: str, relation: str | None = None) -> str | None:
        """For `x.name` (PostgreSQL's column notation for `name(x)`): None, or why that call may not run.

        `relation`: the table `x` names in the query's FROM, when the guard can tell; a column
        of that name in it is what the server reads, never the function.
        """

    def grammar(self, name: str) -> bool:
        """True when `name (`, unquoted and unqualified, is grammar to the server and never a function call."""

    def knows(self, name: str) -> bool:
        """Whether some function of this name may exist on the server (always True where the guard cannot know)."""

    def operator_refusal(self, operator: str) -> str | None:
        """None when the operator may run; else why not."""

    def type_refusal(self, name: str) -> str | None:
        """None when casting to / reading a literal of this type runs no unsafe function; else why not."""


class CallsOnly:
    """For an engine where only function calls can reach outside the query: attributes, operators and types pass."""

    def attribute_refusal(self, name: str, relation: str | None = None) -> str | None:
        return None

    def grammar(self, name: str) -> bool:
        return False

    def knows(self, name: str) -> bool:
        return True

    def operator_refusal(self, operator: str) -> str | None:
        return None

    def type_refusal(self, name: str) -> str | None:
        return None


def _display(schema: str | None, name: str) -> str:
    return f"{schema}.{name}()" if schema else f"{name}()"


# --- PostgreSQL --------------------------------------------------------------------------

# VOLATILE built-ins (pg_catalog only) that change nothing and keep nothing past the query.
PG_REVIEWED_VOLATILE: Mapping[str, str] = {
    "random": "a random number",
    "random_normal": "a random number",
    "gen_random_uuid": "a random UUID",
    "uuidv4": "a random UUID",
    "uuidv7": "a time-ordered UUID",
    "clock_timestamp": "reads the clock",
    "timeofday": "reads the clock",
    "pg_sleep": "waits, bounded by the query's time limit",
    "pg_sleep_for": "waits, bounded by the query's time limit",
    "pg_sleep_until": "waits, bounded by the query's time limit",
    "pg_relation_size": "reads a relation's size on disk",
    "pg_table_size": "reads a table's size on disk",
    "pg_indexes_size": "reads index sizes on disk",
    "pg_total_relation_size": "reads a relation's size on disk",
    "pg_database_size": "reads a database's size on disk",
    "pg_tablespace_size": "reads a tablespace's size on disk",
    "pg_is_in_recovery": "reads the server's state",
    "pg_partition_tree": "reads the catalog",
    "pg_partition_ancestors": "reads the catalog",
    "pg_jit_available": "reads a setting",
}

# Functions refused whatever their volatility says (exact names), with the reason given to the user.
_RUNS_SQL = "runs SQL given to it as text (or built inside it), out of the guard's sight"
_FILES = "reads or writes files on the database server"
_SIGNALS = "signals another backend (cancels or terminates its query)"
_LOCKS = "takes a lock that outlives the query"
_SESSION = "changes the session's state, which outlives the query"
_TYPE_IO = "runs the input function of a type named at run time"
# PostgreSQL 15 runs it inside a READ ONLY transaction too: it spends a transaction ID, which is server state.
_XID = "assigns the transaction a permanent ID, which even a read-only transaction may do (it uses up transaction IDs, server-wide state)"
PG_DENIED: Mapping[str, str] = {
    "query_to_xml": _RUNS_SQL,
    "query_to_xmlschema": _RUNS_SQL,
    "query_to_xml_and_xmlschema": _RUNS_SQL,
    "cursor_to_xml": _RUNS_SQL,
    "cursor_to_xmlschema": _RUNS_SQL,
    "table_to_xml": _RUNS_SQL,
    "table_to_xmlschema": _RUNS_SQL,
    "table_to_xml_and_xmlschema": _RUNS_SQL,
    "schema_to_xml": _RUNS_SQL,
    "schema_to_xmlschema": _RUNS_SQL,
    "schema_to_xml_and_xmlschema": _RUNS_SQL,
    "database_to_xml": _RUNS_SQL,
    "database_to_xmlschema": _RUNS_SQL,
    "database_to_xml_and_xmlschema": _RUNS_SQL,
    "ts_stat": _RUNS_SQL,
    "ts_rewrite": _RUNS_SQL,
    "pg_read_file": _FILES,
    "pg_read_file_old": _FILES,
    "pg_read_binary_file": _FILES,
    "pg_stat_file": _FILES,
    "pg_file_write": _FILES,
    "pg_file_rename": _FILES,
    "pg_file_unlink": _FILES,
    "pg_file_sync": _FILES,
    "loread": _FILES,
    "lowrite": _FILES,
    "pg_cancel_backend": _SIGNALS,
    "pg_terminate_backend": _SIGNALS,
    "pg_signal_backend": _SIGNALS,
    "pg_reload_conf": _SIGNALS,
    "pg_rotate_logfile": _SIGNALS,
    "pg_log_backend_memory_contexts": _SIGNALS,
    "set_config": _SESSION,
    "setseed": _SESSION,
    "nextval": _SESSION,
    "setval": _SESSION,
    "pg_notify": _SESSION,
    "txid_current": _XID,
    "pg_current_xact_id": _XID,
    "pg_input_is_valid": _TYPE_IO,
    "pg_input_error_info": _TYPE_IO,
}
PG_DENIED_PREFIXES: Mapping[str, str] = {
    "lo_": _FILES,
    "pg_ls_": _FILES,
    "dblink": "connects to another database server and runs SQL given as text there",
    "pg_advisory": _LOCKS,
    "pg_try_advisory": _LOCKS,
}

# PostgreSQL syntax that looks like a call but is grammar (unquoted, unqualified only).
PG_SYNTAX_CALLS = frozenset(
    {
        "coalesce",
        "greatest",
        "least",
        "nullif",
        "row",
        "array",
        "exists",
        "cast",
        "treat",
        "trim",
        "extract",
        "overlay",
        "position",
        "substring",
        "normalize",
        "collation",
        "grouping",
        "values",
        "any",
        "all",
        "some",
        "xmlelement",
        "xmlforest",
        "xmlconcat",
        "xmlparse",
        "xmlpi",
        "xmlroot",
        "xmlserialize",
        "xmlexists",
        "xmlattributes",
        "xmltable",
        "xmlnamespaces",
        "json",
        "json_object",
        "json_array",
        "json_objectagg",
        "json_arrayagg",
        "json_query",
        "json_value",
        "json_exists",
        "json_table",
        "json_scalar",
        "json_serialize",
        "current_time",
        "current_timestamp",
        "localtime",
        "localtimestamp",
    }
)

_TRUSTED_LANGUAGES = frozenset({"internal", "c"})
_TRUSTED_SCHEMAS = frozenset({"pg_catalog", "information_schema"})
_VOLATILITY = {"i": "IMMUTABLE", "s": "STABLE", "v": "VOLATILE"}

CATALOG_SQL = """
SELECT p.oid::int8 AS oid, n.nspname, p.proname, p.provolatile::text AS volatility, p.prokind::text AS kind,
       l.lanname, p.pronargs::int AS nargs, p.pronargdefaults::int AS nargdefaults, p.provariadic <> 0 AS variadic,
       (p.proargtypes::oid[] && ARRAY['cstring'::regtype::oid, 'internal'::regtype::oid]) AS type_io,
       (SELECT array_agg(s::int8) FROM pg_aggregate a,
               unnest(ARRAY[a.aggtransfn, a.aggfinalfn, a.aggcombinefn, a.aggserialfn, a.aggdeserialfn,
                            a.aggmtransfn, a.aggminvtransfn, a.aggmfinalfn]::oid[]) AS s
         WHERE a.aggfnoid = p.oid AND s <> 0) AS support
  FROM pg_proc p
  JOIN pg_namespace n ON n.oid = p.pronamespace
  JOIN pg_language l ON l.oid = p.prolang
"""
OPERATORS_SQL = "SELECT oprname, oprcode::oid::int8 AS code FROM pg_operator WHERE oprcode <> 0"
# The server's own keywords: R (reserved) and C (column name) ones before `(` are grammar, never a call.
KEYWORDS_SQL = "SELECT word, catcode::text AS category FROM pg_get_keywords()"
# Columns that share a name with a function: `t.name` is then the column, where t is that table.
COLUMNS_SQL = """
SELECT c.relname::text AS relation, array_agg(DISTINCT a.attname::text) AS columns
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
 WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attname IN (SELECT proname FROM pg_proc)
 GROUP BY c.relname, c.oid
"""
TYPES_SQL = """
SELECT t.typname, t.typinput::oid::int8 AS input,
       (SELECT array_agg(c.castfunc::int8) FROM pg_cast c WHERE c.casttarget = t.oid AND c.castfunc <> 0) AS casts
  FROM pg_type t
"""


@dataclass(frozen=True)
class PgFunction:
    """One row of pg_proc, as much as the allow rule needs."""

    oid: int
    schema: str
    name: str
    volatility: str
    kind: str
    language: str
    nargs: int
    type_io: bool
    support: tuple[int, ...] = ()
    nargdefaults: int = 0
    variadic: bool = False

    def takes_one(self) -> bool:
        """Whether `f(x)`, hence `x.f`, can resolve to it: counting defaults and a VARIADIC parameter."""
        return self.nargs - self.nargdefaults <= 1 and (self.nargs >= 1 or self.variadic)


def _denied(name: str) -> str | None:
    if name in PG_DENIED:
        return PG_DENIED[name]
    for prefix, reason in PG_DENIED_PREFIXES.items():
        if name.startswith(prefix):
            return reason
    return None


@dataclass(frozen=True)
class PgCatalog:
    """A source's functions, operators and types, read from its catalog when the pool opened."""

    functions: list[PgFunction]
    operators: list[tuple[str, int]] = field(default_factory=list)
    types: list[tuple[str, int, tuple[int, ...]]] = field(default_factory=list)
    keywords: Mapping[str, str] = field(default_factory=dict)
    # relation name -> its columns named like a function, one entry per relation of that name
    columns: list[tuple[str, frozenset[str]]] = field(default_factory=list)

    @classmethod
    async def load(cls, conn: Any) -> PgCatalog:
        """Read the catalog through an asyncpg connection."""
        functions = [
            PgFunction(r["oid"], r["nspname"], r["proname"], r["volatility"], r["kind"], r["lanname"], r["nargs"], r["type_io"], tuple(r["support"] or ()), r["nargdefaults"], r["variadic"])
            for r in await conn.fetch(CATALOG_SQL)
        ]
        operators = [(r["oprname"], r["code"]) for r in await conn.fetch(OPERATORS_SQL)]
        types = [(r["typname"], r["input"], tuple(r["casts"] or ())) for r in await conn.fetch(TYPES_SQL)]
        keywords = {r["word"]: r["category"] for r in await conn.fetch(KEYWORDS_SQL)}
        columns = [(r["relation"], frozenset(r["columns"])) for r in await conn.fetch(COLUMNS_SQL)]
        return cls(functions, operators, types, keywords, columns)

    def policy(self, allowed: Iterable[FunctionName] = ()) -> PgPolicy:
        return PgPolicy(self, frozenset(allowed))


class PgPolicy:
    """The allow rule over one PgCatalog, plus the operator's QUERY_ALLOWED_FUNCTIONS for this source."""

    def __init__(self, catalog: PgCatalog, allowed: frozenset[FunctionName]) -> None:
        self.allowed = allowed
        self._by_oid = {f.oid: f for f in catalog.functions}
        self._by_name: dict[str, list[PgFunction]] = {}
        for f in catalog.functions:
            self._by_name.setdefault(f.name, []).append(f)
        self._cache: dict[FunctionName, str | None] = {}
        self._keywords = catalog.keywords
        # A column every relation of that name has (the guard cannot tell which schema's table the query reads).
        self._columns: dict[str, frozenset[str]] = {}
        for relation, columns in catalog.columns:
            self._columns[relation] = self._columns[relation] & columns if relation in self._columns else columns
        self._unsafe_operators: dict[str, str] = {}
        for name, code in catalog.operators:
            f = self._by_oid.get(code)
            reason = self._function_reason(f, indirect=True) if f is not None else "its function is unknown"
            if reason and name not in self._unsafe_operators:
                self._unsafe_operators[name] = f"the operator {name} calls {f.schema + '.' + f.name if f else 'a function'}(), which {reason}"
        self._unsafe_types: dict[str, str] = {}
        for name, input_oid, casts in catalog.types:
            for oid in (input_oid, *casts):
                f = self._by_oid.get(oid)
                reason = self._function_reason(f, indirect=True) if f is not None else None
                if reason and f is not None:
                    self._unsafe_types[name] = f"values of type {name} are made by {f.schema}.{f.name}(), which {reason}"
                    break

    def _operator_allows(self, f: PgFunction) -> bool:
        return (None, f.name) in self.allowed or (f.schema, f.name) in self.allowed

    def _function_reason(self, f: PgFunction, indirect: bool = False) -> str | None:
        """Why one pg_proc entry may not run (None: it may).

        `indirect`: the server calls it, not the query by name (an aggregate's step, a type's
        input function, a cast), so taking cstring or internal is expected of it.
        """
        denied = _denied(f.name)
        if denied:
            return denied
        if self._operator_allows(f):
            return None
        if f.schema == "pg_catalog" and f.name in PG_REVIEWED_VOLATILE:
            return None
        if f.type_io and not indirect:
            return "is a type input/output function (it takes cstring or internal), not for queries"
        if f.kind == "p":
            return "is a procedure"
        if f.volatility not in ("i", "s"):
            return f"is {_VOLATILITY.get(f.volatility, f.volatility)} (it may change something), and not on the reviewed list"
        if f.language not in _TRUSTED_LANGUAGES and f.schema not in _TRUSTED_SCHEMAS:
            return f"is written in {f.language}, and PostgreSQL does not hold such a function to its {_VOLATILITY.get(f.volatility, '')} label; add it to QUERY_ALLOWED_FUNCTIONS if it only reads"
        if f.kind == "a" and not indirect:
            for oid in f.support:
                step = self._by_oid.get(oid)
                reason = self._function_reason(step, indirect=True) if step is not None else "is unknown"
                if reason:
                    return f"is an aggregate whose step function {step.name if step else oid}() {reason}"
        return None

    def refusal(self, schema: str | None, name: str) -> str | None:
        key = (schema, name)
        if key not in self._cache:
            self._cache[key] = self._refusal(schema, name)
        return self._cache[key]

    def _refusal(self, schema: str | None, name: str) -> str | None:
        shown = _display(schema, name)
        denied = _denied(name)
        if denied:
            return f"the function {shown} {denied}"
        candidates = [f for f in self._by_name.get(name, ()) if schema is None or f.schema == schema]
        if not candidates:
            if (schema, name) in self.allowed:
                return None
            return f"the function {shown} is not in the database's catalog (as read when the source opened), so the guard cannot tell what it does"
        for f in candidates:
            reason = self._function_reason(f)
            if reason:
                where = f"{f.schema}.{f.name}" if len(candidates) == 1 else f"{f.schema}.{f.name} (one of {len(candidates)} functions that name can resolve to)"
                return f"the function {shown} is not allowed: {where} {reason}"
        return None

    def attribute_refusal(self, name: str, relation: str | None = None) -> str | None:
        if relation is not None and name in self._columns.get(relation, ()):
            return None
        if _denied(name) is None and not any(f.takes_one() for f in self._by_name.get(name, ())):
            return None
        reason = self.refusal(None, name)
        return f"{reason} (x.{name} calls {name}(x) unless x has a column {name})" if reason else None

    def grammar(self, name: str) -> bool:
        return self._keywords.get(name) in ("R", "C")

    def knows(self, name: str) -> bool:
        return name in self._by_name

    def operator_refusal(self, operator: str) -> str | None:
        for name, reason in self._unsafe_operators.items():
            if name in operator:
                return reason
        return None

    def type_refusal(self, name: str) -> str | None:
        return self._unsafe_types.get(name)


# --- MySQL / MariaDB ---------------------------------------------------------------------

# Built-in functions that compute a value from their arguments, the clock, a random source
# or read-only server state, and change nothing. Deliberately absent: LOAD_FILE (reads server
# files), GET_LOCK / RELEASE_LOCK / RELEASE_ALL_LOCKS / IS_FREE_LOCK / IS_USED_LOCK (named
# locks outlive the query on a pooled connection), BENCHMARK (burns CPU, no use in a query),
# MASTER_POS_WAIT / MASTER_GTID_WAIT / SOURCE_POS_WAIT / WAIT_FOR_EXECUTED_GTID_SET
# (replication waits), NEXTVAL / SETVAL / LASTVAL (sequences advance), LAST_INSERT_ID (with an
# argument it sets session state), BINLOG_GTID_POS and the WSREP_* functions (replication and
# cluster state), SYS_EXEC / SYS_EVAL and every other UDF, every stored function.
# SLEEP is allowed: it holds nothing and the statement time limit stops it.
MYSQL_ALLOWED = frozenset(
    """
    abs acos adddate addtime aes_decrypt aes_encrypt any_value ascii asin atan atan2 avg bin bin_to_uuid bit_and
    bit_count bit_length bit_or bit_xor cast ceil ceiling char char_length character_length charset chr coalesce
    coercibility collation compress concat concat_ws connection_id conv convert convert_tz cos cot count crc32
    crc32c cume_dist curdate current_date current_role current_time current_timestamp current_user curtime database
    date date_add date_format date_sub datediff day dayname dayofmonth dayofweek dayofyear decode default degrees
    dense_rank des_decrypt des_encrypt elt encode encrypt exp export_set extract extractvalue field find_in_set
    first_value floor format format_bytes format_pico_time found_rows from_base64 from_days from_unixtime
    geometrycollection greatest group_concat hex hour if ifnull inet6_aton inet6_ntoa inet_aton inet_ntoa insert
    instr is_ipv4 is_ipv4_compat is_ipv4_mapped is_ipv6 is_uuid isnull json_array json_arrayagg json_array_append
    json_array_insert json_array_intersect json_compact json_contains json_contains_path json_depth json_detailed
    json_equals json_exists json_extract json_insert json_keys json_length json_loose json_merge json_merge_patch
    json_merge_preserve json_normalize json_object json_objectagg json_object_filter_keys json_object_to_array
    json_overlaps json_pretty json_query json_quote json_remove json_replace json_schema_valid json_search json_set
    json_storage_size json_type json_unquote json_valid json_value kdf lag last_day last_value lcase lead least left
    length linestring ln localtime localtimestamp locate log log10 log2 lower lpad ltrim make_set makedate maketime
    max md5 median microsecond mid min minute mod month monthname multilinestring multipoint multipolygon
    natural_sort_key now nth_value ntile nullif oct octet_length ord percent_rank percentile_cont percentile_disc
    period_add period_diff pi point polygon position pow power quarter quote radians rand random_bytes rank
    regexp_instr regexp_like regexp_replace regexp_substr release_version repeat replace reverse right round
    row_count row_number rpad rtrim schema sec_to_time second session_user sformat sha sha1 sha2 sign sin sleep
    soundex space sqrt std stddev stddev_pop stddev_samp str_to_date strcmp subdate substr substring substring_index
    subtime sum sys_guid sysdate system_user tan time time_format time_to_sec timediff timestamp timestampadd
    timestampdiff to_base64 to_char to_days to_seconds trim truncate ucase uncompress uncompressed_length unhex
    unix_timestamp updatexml upper user utc_date utc_time utc_timestamp uuid uuid_short uuid_to_bin var_pop var_samp
    variance version week weekday weekofyear weight_string year yearweek
    add_months column_add column_check column_create column_delete column_exists column_get column_json column_list
    get_format json_table decode_histogram lengthb name_const nvl nvl2
    concat_operator_oracle decode_oracle lpad_oracle ltrim_oracle replace_oracle rpad_oracle rtrim_oracle
    substr_oracle trim_oracle
    st_area st_asbinary st_asgeojson st_astext st_aswkb st_aswkt st_buffer st_centroid st_contains st_convexhull
    st_crosses st_difference st_dimension st_disjoint st_distance st_distance_sphere st_endpoint st_envelope
    st_equals st_geomfromgeojson st_geomfromtext st_geomfromwkb st_geometryn st_geometrytype st_intersection
    st_intersects st_isclosed st_isempty st_issimple st_isvalid st_length st_numgeometries st_numpoints st_overlaps
    st_pointfromtext st_pointn st_srid st_startpoint st_symdifference st_touches st_union st_within st_x st_y
    """.split()
)

# SQL syntax that looks like a call (unqualified only).
MYSQL_SYNTAX_CALLS = frozenset({"values", "exists", "any", "all", "some", "row", "interval", "match", "against", "in"})


# MariaDB's reserved words: unquoted, one of these is never the name of a called function.
MARIADB_RESERVED = frozenset(
    """
    accessible add all alter analyze and as asc asensitive before between bigint binary blob both by call cascade case
    change char character check collate column condition constraint continue convert create cross current_date
    current_role current_time current_timestamp current_user cursor databases day_hour day_microsecond day_minute
    day_second dec decimal declare default delayed delete desc describe deterministic distinct distinctrow div double
    drop dual each else elseif enclosed escaped except exists exit explain false fetch float float4 float8 for force
    foreign from fulltext grant group having high_priority hour_microsecond hour_minute hour_second if ignore in index
    infile inner inout insensitive insert int int1 int2 int3 int4 int8 integer intersect interval into is iterate join
    key keys kill leading leave left like limit linear lines load localtime localtimestamp lock long longblob longtext
    loop low_priority match maxvalue mediumblob mediumint mediumtext middleint minute_microsecond minute_second mod
    modifies natural not no_write_to_binlog null numeric offset on optimize optionally or order out outer outfile over
    partition precision primary procedure purge range read reads read_write real recursive references regexp release
    rename repeat replace require resignal restrict return returning revoke right rlike row_number rows schemas
    second_microsecond select sensitive separator set show signal smallint spatial specific sql sqlexception sqlstate
    sqlwarning sql_big_result sql_calc_found_rows sql_small_result ssl starting straight_join table terminated then
    tinyblob tinyint tinytext to trailing trigger true undo union unique unlock unsigned update usage use using
    utc_date utc_time utc_timestamp values varbinary varchar varcharacter varying when where while with write xor
    year_month zerofill
    """.split()
)


class MysqlPolicy(CallsOnly):
    """The reviewed built-ins plus the operator's QUERY_ALLOWED_FUNCTIONS for this source."""

    def grammar(self, name: str) -> bool:
        # The server's grammar takes these before `(`: reserved words, and ROW/EXISTS/ANY… forms.
        return name.lower() in MARIADB_RESERVED or name.lower() in MYSQL_SYNTAX_CALLS

    def __init__(self, allowed: Iterable[FunctionName] = ()) -> None:
        self._allowed = frozenset((s.lower() if s else None, n.lower()) for s, n in allowed)

    def refusal(self, schema: str | None, name: str) -> str | None:
        name_l, schema_l = name.lower(), schema.lower() if schema else None
        if (schema_l, name_l) in self._allowed or (schema_l is not None and (None, name_l) in self._allowed):
            return None
        shown = _display(schema, name)
        if not name.isascii():
            # MariaDB matches function names under its own case folding (ſleep is SLEEP to it), not Python's.
            return f"the function {shown} has letters beyond ASCII in its name; the server matches such names by rules the guard does not repeat"
        if schema is None and name_l in MYSQL_ALLOWED:
            return None
        if schema is None and name_l in _MYSQL_REASONS:
            return f"the function {shown} {_MYSQL_REASONS[name_l]}"
        if schema is not None:
            return f"the function {shown} is a stored function; only reviewed built-ins and those in QUERY_ALLOWED_FUNCTIONS may run"
        return f"the function {shown} is not a reviewed built-in (a UDF or stored function?); an operator may allow it in QUERY_ALLOWED_FUNCTIONS"


_MYSQL_REASONS: Mapping[str, str] = {
    "load_file": _FILES,
    "get_lock": _LOCKS,
    "release_lock": "releases a named lock, which belongs to the connection, not the query",
    "release_all_locks": "releases named locks, which belong to the connection, not the query",
    "is_free_lock": "inspects named locks, which belong to connections, not queries",
    "is_used_lock": "inspects named locks, which belong to connections, not queries",
    "benchmark": "only burns CPU (it evaluates an expression many times)",
    "master_pos_wait": "waits on replication",
    "master_gtid_wait": "waits on replication",
    "source_pos_wait": "waits on replication",
    "wait_for_executed_gtid_set": "waits on replication",
    "nextval": "advances a sequence",
    "setval": "sets a sequence",
    "lastval": "reads the session's sequence state",
    "last_insert_id": "with an argument, sets the session's last insert id",
    "sys_exec": "runs a program on the database server",
    "sys_eval": "runs a program on the database server",
}


# --- SQLite ------------------------------------------------------------------------------

# The SQLite engine opens its file read-only and registers no functions; it keeps a short
# deny list of the extension functions that would reach the file system if compiled in.
SQLITE_DENIED = frozenset({"load_extension", "writefile", "readfile", "edit", "fts3_tokenizer"})


class SqlitePolicy(CallsOnly):
    def refusal(self, schema: str | None, name: str) -> str | None:
        if name.lower() in SQLITE_DENIED:
            return f"the function {_display(schema, name)} reaches outside the database and is not allowed"
        return None
