"""Value builders whose literal arguments say they would build a value larger than QUERY_MAX_CELL_BYTES.

The wire check (services/query/wire.py) stops such a value when the server sends it, but
the server has built it by then, and on MariaDB some builders (REPLACE, REGEXP_REPLACE
over the result) cannot be interrupted even by the statement time limit. Where the sizes are
literals in the SQL, the guard refuses the statement before it runs. Computed sizes
(`repeat('x', n)` with `n` from a column or a subquery) it cannot tell; arithmetic on literals it computes; docs/query-guard.md says what
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
    """A size written as a literal or as arithmetic on literals (`10000000 + 0`, `1e3 * 1e3`); else None."""
    value = _constant(node)
    if value is None:
        return None
    try:
        return max(0, int(value))
    except (ValueError, OverflowError):
        return None


_ARITHMETIC = {exp.Add: float.__add__, exp.Sub: float.__sub__, exp.Mul: float.__mul__}


def _constant(node: exp.Expression | None) -> float | None:
    if isinstance(node, exp.Literal) and node.is_number:
        try:
            return float(node.this) if not node.this.lower().startswith(("0x", "0b")) else float(int(node.this, 0))
        except ValueError:
            return None
    if isinstance(node, exp.Paren):
        return _constant(node.this)
    if isinstance(node, exp.Neg):
        inner = _constant(node.this)
        return -inner if inner is not None else None
    if isinstance(node, exp.Cast):
        return _constant(node.this)
    operation = _ARITHMETIC.get(type(node))
    if operation is not None:
        left, right = _constant(node.this), _constant(node.expression)
        return operation(left, right) if left is not None and right is not None else None
    return None
