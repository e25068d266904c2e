"""Value builders whose literal arguments say they would build a value larger than QUERY_MAX_CELL_BYTES.

The wire check (services/query/wire.py) stops such a value when the server sends it, but
the server has built it by then, and on MariaDB some builders (REPLACE, REGEXP_REPLACE
over the result) cannot be interrupted even by the statement time limit. Where the sizes are
literals in the SQL, the guard refuses the statement before it runs. Computed sizes
(`repeat('x', n)` with `n` from a column) it cannot tell; docs/query-guard.md says what
then bounds them.
"""

from __future__ import annotations

from sqlglot import exp

from shared.errors import QUERY_REFUSED, ServiceError


def check_value_sizes(statement: exp.Expression, max_bytes: int) -> None:
    """Refuse the first value builder whose literal arguments make a value over `max_bytes`."""
    for node in statement.walk():
        size = literal_size(node)
        if size is not None and size > max_bytes:
            name = ("lpad" if node.args.get("is_left") else "rpad") if isinstance(node, exp.Pad) else str(node.this) if isinstance(node, exp.Anonymous) else node.sql_name()
            raise ServiceError(
                QUERY_REFUSED,
                f"{name.lower()}() here would build a value of at least {size} bytes, more than the {max_bytes}-byte limit per value (QUERY_MAX_CELL_BYTES)",
            )


def literal_size(node: exp.Expression) -> int | None:
    """The least number of bytes `node` builds, when its arguments are literals (or builders of known size); else None."""
    if isinstance(node, exp.Literal):
        return len(node.this.encode("utf-8")) if node.is_string else None
    if isinstance(node, exp.Repeat):
        times, text = _number(node.args.get("times")), literal_size(node.this)
        return times * text if times is not None and text is not None else None
    if isinstance(node, exp.Pad):
        fill = node.args.get("fill_pattern")
        if fill is not None and literal_size(fill) in (None, 0):
            return None  # an empty fill pads nothing
        return _number(node.args.get("expression"))
    if isinstance(node, exp.Space):
        return _number(node.this)
    if isinstance(node, exp.Anonymous) and str(node.this).lower() in ("zeroblob", "randomblob") and len(node.expressions) == 1:
        return _number(node.expressions[0])
    return None


def _number(node: exp.Expression | None) -> int | None:
    if isinstance(node, exp.Literal) and node.is_number:
        try:
            return max(0, int(float(node.this)))
        except (ValueError, OverflowError):
            return None
    return None
