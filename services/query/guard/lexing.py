"""Lexical checks that must happen before sqlglot sees the SQL, because there it and the server disagree.

PostgreSQL: Unicode-escaped identifiers and strings (`U&"…"`, `U&'…'`, optional `UESCAPE`)
are decoded exactly as the server's scanner does, dollar-quoted strings become plain ones
and comments (which nest) become spaces; the result says the same thing in a form sqlglot
reads as the server does. MySQL/MariaDB: the SQL is tokenised by MariaDB's own rules (where
`--` starts a comment, which characters are white space, how strings and names are quoted)
and re-spelled for sqlglot; executable comments and optimizer hints, which the server runs
and sqlglot skips, are refused outright.
"""

from __future__ import annotations

import re

from shared.errors import QUERY_REFUSED, ServiceError

# PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes.
MAX_IDENTIFIER_BYTES = 63

CANNOT_ANALYSE = "the guard cannot analyse this statement"


def cannot_analyse(why: str) -> ServiceError:
    return ServiceError(QUERY_REFUSED, f"{CANNOT_ANALYSE}: {why}")


# --- MySQL / MariaDB ---------------------------------------------------------------------

# `/*!` (MySQL and MariaDB run the body, optionally only from a server version on), `/*M!`
# (MariaDB runs it), `/*+` (MySQL optimizer hints; SET_VAR() in one changes a variable, such
# as the statement time limit, for the statement). Matched anywhere, even inside what looks
# like a string: how the server splits strings depends on sql_mode, and a query never needs these.
_MYSQL_EXECUTABLE = re.compile(r"/\*(?:[Mm]?!|\+)")


def check_mysql_comments(sql: str) -> None:
    """Refuse executable comments and optimizer hints, anywhere in the text (even inside what looks like a string)."""
    found = _MYSQL_EXECUTABLE.search(sql)
    if found:
        form = found.group(0)
        if form.endswith("+"):
            raise ServiceError(
                QUERY_REFUSED,
                "optimizer hints (/*+ … */) are not allowed: MySQL runs SET_VAR() and other hints in them; remove the comment",
            )
        raise ServiceError(
            QUERY_REFUSED,
            f"executable comments ({form} … */) are not allowed: MySQL and MariaDB run their content as SQL, so the guard cannot vouch for it; write the SQL without the comment",
        )


# The server's white space (my_isspace in its character set): ASCII only. Anything else that
# Python or sqlglot may call space (U+00A0, U+3000, U+0085, …) is an identifier character
# to MariaDB, which reads every byte from 0x80 up as part of a name.
MYSQL_SPACE = frozenset(" \t\n\x0b\x0c\r")
_MY_WORD = re.compile(r"[A-Za-z0-9_$\u0080-\U0010ffff]+")
_MY_NUMBER = re.compile(r"0x[0-9A-Fa-f]+|0b[01]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_MY_ESCAPES = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a", "%": "\\%", "_": "\\_"}


def mysql_dash_comment(sql: str, i: int) -> bool:
    """Whether the `--` at `i` starts a comment: MariaDB wants white space or a control character after it."""
    if i + 2 >= len(sql):
        return True
    after = sql[i + 2]
    return after in MYSQL_SPACE or ord(after) < 32 or after == "\x7f"


def normalize_mysql(sql: str) -> str:
    """`sql` re-spelled so that sqlglot reads the tokens MariaDB reads (sql_mode pinned by the engine, see mysql.py).

    Comments become spaces, strings and quoted names a canonical spelling, names with
    characters beyond ASCII backquoted, `--` that is not a comment two separate minus signs.
    What the server's lexer would read in a way this one cannot be sure of (a control
    character, a NUL, a name starting with a digit, a quoted variable name) is refused.
    """
    check_mysql_comments(sql)
    if "\x00" in sql:
        raise cannot_analyse("the SQL holds a NUL character")
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in MYSQL_SPACE:
            out.append(c)
            i += 1
        elif c == "#" or (sql.startswith("--", i) and mysql_dash_comment(sql, i)):
            end = sql.find("\n", i)
            i = n if end == -1 else end
            out.append(" ")
        elif sql.startswith("--", i):
            out.append("- ")  # `--1` is minus minus one: never let sqlglot see `--`
            i += 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end == -1:
                raise cannot_analyse("a /* comment is not closed")
            if "/*" in sql[i + 2 : end]:
                raise cannot_analyse("a comment opens inside another comment (MySQL does not nest comments)")
            out.append(" ")
            i = end + 2
        elif c in "'\"":
            value, i = _mysql_string(sql, i)
            out.append(_plain_mysql_string(value))
        elif c == "`":
            end = _quoted_end(sql, i, "`")
            name = sql[i + 1 : end - 1].replace("``", "`")
            if not name:
                raise cannot_analyse("a zero-length quoted name (``)")
            out.append("`" + name.replace("`", "``") + "`")
            i = end
        elif c in "xXbB" and sql.startswith("'", i + 1):
            end = sql.find("'", i + 2)
            digits = sql[i + 2 : end] if end != -1 else None
            allowed = _HEX if c in "xX" else frozenset("01")
            if digits is None or not set(digits) <= allowed:
                raise cannot_analyse(f"a {c.upper()}'…' literal must hold only {'hex' if c in 'xX' else 'binary'} digits and be closed")
            out.append(sql[i : end + 1])
            i = end + 1
        elif c.isascii() and c.isdigit() or (c == "." and i + 1 < n and sql[i + 1].isascii() and sql[i + 1].isdigit() and not _after_name(out)):
            number = _MY_NUMBER.match(sql, i)
            assert number is not None
            i = number.end()
            if i < n and _MY_WORD.match(sql, i) and not sql[i].isdigit():
                raise cannot_analyse(f"{sql[number.start() : i + 1]!r}…: MySQL reads a name that starts with digits")
            out.append(number.group(0))
        elif _MY_WORD.match(c):
            word = _MY_WORD.match(sql, i)
            assert word is not None
            text = word.group(0)
            out.append(text if text.isascii() else "`" + text + "`")
            i = word.end()
        elif c == "@":
            if i + 1 < n and sql[i + 1] in "'\"`":
                raise cannot_analyse("a quoted variable name (@'…')")
            out.append(c)
            i += 1
        elif c == "\\":
            if not sql.startswith("\\N", i):
                raise cannot_analyse("a backslash outside a string")
            out.append(" NULL ")
            i += 2
        elif ord(c) < 32 or c == "\x7f":
            raise cannot_analyse(f"the control character {c!r} outside a string")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _after_name(out: list[str]) -> bool:
    """`t.5`, `f().5`: after a name or a closing parenthesis a dot qualifies, it does not start a number."""
    last = out[-1][-1:] if out else ""
    return last in ("`", ")") or bool(last and _MY_WORD.fullmatch(last))


def _mysql_string(sql: str, i: int) -> tuple[str, int]:
    """The value of the '…' or "…" string at `i` (backslash escapes and doubled quotes), and where it ends."""
    quote = sql[i]
    out: list[str] = []
    j, n = i + 1, len(sql)
    while j < n:
        c = sql[j]
        if c == "\\":
            if j + 1 >= n:
                break
            nxt = sql[j + 1]
            out.append(_MY_ESCAPES.get(nxt, nxt))
            j += 2
        elif c == quote:
            if sql.startswith(quote, j + 1):
                out.append(quote)
                j += 2
            else:
                return "".join(out), j + 1
        else:
            out.append(c)
            j += 1
    raise cannot_analyse("a string is not closed")


def _plain_mysql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# --- PostgreSQL ------------------------------------------------------------------------

_WORD_START = re.compile(r"[A-Za-z_\u0080-\U0010ffff]")
_WORD = re.compile(r"[A-Za-z0-9_$\u0080-\U0010ffff]*")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")
_HEX = frozenset("0123456789abcdefABCDEF")


def normalize_postgres(sql: str) -> str:
    """`sql` with U& identifiers/strings decoded, dollar quotes made plain strings, comments made spaces.

    Raises a refusal for what the server would not accept either (an unterminated string,
    identifier or comment, an invalid Unicode escape), so that sqlglot never guesses.
    """
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            end = _line_end(sql, i)
            out.append(" ")
            i = end
        elif sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
            out.append(" ")
        elif c == "'":
            end = _quoted_end(sql, i, "'")
            out.append(sql[i:end])
            i = end
        elif c == '"':
            end = _quoted_end(sql, i, '"')
            if end - i == 2:
                raise cannot_analyse('a zero-length quoted identifier ("")')
            out.append(sql[i:end])
            i = end
        elif c == "$" and (tag := _DOLLAR_TAG.match(sql, i)):
            delimiter = tag.group(0)
            close = sql.find(delimiter, tag.end())
            if close == -1:
                raise cannot_analyse(f"the dollar-quoted string opened with {delimiter} is not closed")
            out.append(_plain_string(sql[tag.end() : close]))
            i = close + len(delimiter)
        elif _WORD_START.match(c):
            word_end = _WORD.match(sql, i + 1)
            assert word_end is not None
            j = word_end.end()
            word = sql[i:j]
            if word in ("u", "U") and sql.startswith(("&'", '&"'), j):
                quote = sql[j + 1]
                end = _quoted_end(sql, j + 1, quote)
                body = sql[j + 2 : end - 1].replace(quote * 2, quote)
                escape, end = _uescape(sql, end)
                decoded = decode_unicode_escapes(body, escape)
                if quote == '"':
                    if not decoded:
                        raise cannot_analyse('a zero-length quoted identifier (U&"")')
                    out.append('"' + decoded.replace('"', '""') + '"')
                else:
                    out.append(_plain_string(decoded))
                i = end
            elif word in ("e", "E") and sql.startswith("'", j):
                end = _escape_string_end(sql, j)
                out.append(sql[i:end])
                i = end
            elif word.lower() == "collation" and (call := _collation_for(sql, j)):
                # `COLLATION FOR (x)` is the server's grammar for pg_catalog.pg_collation_for(x); sqlglot cannot read it.
                out.append("pg_catalog.pg_collation_for")
                i = call
            elif not word.isascii():
                # A name to the server (bytes from 0x80 up are name characters, U+00A0 included); no keyword is one.
                out.append('"' + word.translate(_ASCII_LOWER).replace('"', '""') + '"')
                i = j
            else:
                out.append(word)
                i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _collation_for(sql: str, i: int) -> int | None:
    """After the word COLLATION ending at `i`: where the `(` of a following `FOR (` is, if there is one."""
    j = _skip_space(sql, i)
    word = _WORD.match(sql, j)
    if word is None or sql[j : word.end()].lower() != "for":
        return None
    k = _skip_space(sql, word.end())
    return k if sql.startswith("(", k) else None


def _line_end(sql: str, i: int) -> int:
    ends = [p for p in (sql.find("\n", i), sql.find("\r", i)) if p != -1]
    return min(ends) if ends else len(sql)


def _skip_block_comment(sql: str, i: int) -> int:
    depth = 0
    while i < len(sql):
        if sql.startswith("/*", i):
            depth += 1
            i += 2
        elif sql.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    raise cannot_analyse("a /* comment is not closed")


def _quoted_end(sql: str, i: int, quote: str) -> int:
    """The index after the closing quote of the quoted text starting at `i` (a doubled quote is one quote)."""
    j = i + 1
    while True:
        k = sql.find(quote, j)
        if k == -1:
            what = "string" if quote == "'" else "quoted identifier"
            raise cannot_analyse(f"a {what} is not closed")
        if sql.startswith(quote * 2, k):
            j = k + 2
            continue
        return k + 1


def _escape_string_end(sql: str, i: int) -> int:
    """The end of an E'…' string starting at the quote `i` (backslash escapes anything)."""
    j = i + 1
    while j < len(sql):
        c = sql[j]
        if c == "\\":
            j += 2
        elif c == "'":
            if sql.startswith("''", j):
                j += 2
            else:
                return j + 1
        else:
            j += 1
    raise cannot_analyse("an E'…' string is not closed")


def _skip_space(sql: str, i: int) -> int:
    while i < len(sql):
        if sql[i].isspace():
            i += 1
        elif sql.startswith("--", i):
            i = _line_end(sql, i)
        elif sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
        else:
            return i
    return i


def _uescape(sql: str, i: int) -> tuple[str, int]:
    """The escape character of a U& literal ending at `i` (a following UESCAPE 'c' clause), and where it ends."""
    j = _skip_space(sql, i)
    word = _WORD.match(sql, j)
    assert word is not None
    if sql[j : word.end()].lower() != "uescape":
        return "\\", i
    k = _skip_space(sql, word.end())
    if not sql.startswith("'", k):
        raise cannot_analyse("UESCAPE must be followed by a one-character string")
    end = _quoted_end(sql, k, "'")
    escape = sql[k + 1 : end - 1].replace("''", "'")
    if len(escape) != 1 or escape in _HEX or escape in "+'\"" or escape.isspace():
        raise cannot_analyse(f"invalid UESCAPE character {escape!r}")
    return escape, end


def decode_unicode_escapes(body: str, escape: str = "\\") -> str:
    """The text of a U& literal's body, as PostgreSQL decodes it (`\\XXXX`, `\\+XXXXXX`, surrogate pairs)."""
    out: list[str] = []
    i, n = 0, len(body)
    pending_high: int | None = None
    while i < n:
        c = body[i]
        if c != escape:
            if pending_high is not None:
                raise cannot_analyse("invalid Unicode surrogate pair in a U& literal")
            out.append(c)
            i += 1
            continue
        if body.startswith(escape, i + 1):
            if pending_high is not None:
                raise cannot_analyse("invalid Unicode surrogate pair in a U& literal")
            out.append(escape)
            i += 2
            continue
        if body.startswith("+", i + 1):
            digits, i = body[i + 2 : i + 8], i + 8
        else:
            digits, i = body[i + 1 : i + 5], i + 5
        if len(digits) not in (4, 6) or not set(digits) <= _HEX:
            raise cannot_analyse("invalid Unicode escape in a U& literal (use \\XXXX or \\+XXXXXX)")
        code = int(digits, 16)
        if 0xD800 <= code <= 0xDBFF:
            if pending_high is not None:
                raise cannot_analyse("invalid Unicode surrogate pair in a U& literal")
            pending_high = code
            continue
        if 0xDC00 <= code <= 0xDFFF:
            if pending_high is None:
                raise cannot_analyse("invalid Unicode surrogate pair in a U& literal")
            code = 0x10000 + ((pending_high - 0xD800) << 10) + (code - 0xDC00)
            pending_high = None
        elif pending_high is not None:
            raise cannot_analyse("invalid Unicode surrogate pair in a U& literal")
        if code == 0 or code > 0x10FFFF:
            raise cannot_analyse("invalid Unicode escape value in a U& literal")
        out.append(chr(code))
    if pending_high is not None:
        raise cannot_analyse("invalid Unicode surrogate pair in a U& literal")
    return "".join(out)


def _plain_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def postgres_name(text: str, quoted: bool) -> str:
    """An identifier as PostgreSQL stores it: unquoted ones lower-cased (ASCII only), all cut to 63 bytes."""
    if not quoted:
        text = text.translate(_ASCII_LOWER)
    raw = text.encode("utf-8")
    if len(raw) <= MAX_IDENTIFIER_BYTES:
        return text
    return raw[:MAX_IDENTIFIER_BYTES].decode("utf-8", errors="ignore")


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
