"""Lexical checks that must happen before sqlglot sees the SQL, because there it and the server disagree.

PostgreSQL: Unicode-escaped identifiers and strings (`U&"…"`, `U&'…'`, optional `UESCAPE`)
are decoded exactly as the server's scanner does, dollar-quoted strings become plain ones
and comments (which nest) become spaces; the result says the same thing in a form sqlglot
reads as the server does. MySQL/MariaDB: executable comments and optimizer hints, which
the server runs and sqlglot skips, are refused outright.
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
    """Refuse executable comments, optimizer hints and nested comments (which MySQL does not nest)."""
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
    start = sql.find("/*")
    while start != -1:
        end = sql.find("*/", start + 2)
        body = sql[start + 2 : end if end != -1 else len(sql)]
        if "/*" in body:
            raise cannot_analyse("a comment opens inside another comment (MySQL does not nest comments)")
        if end == -1:
            return
        start = sql.find("/*", end + 2)


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
            else:
                out.append(word)
                i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


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
