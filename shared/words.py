"""Words of names and questions, for matching a question to tables (query service) and to verified examples (session service)."""

from __future__ import annotations

import re

_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
STOPWORDS = frozenset(
    "a an and are as at be by for from has have how i in is it its list many me much of on or our per show than that the their them there these this those to "
    "was we were what when where which who whose with would all each every give get find tell do does did my any most top".split()
)


def words(text: str) -> list[str]:
    """`text` as lower-case words, names split at `_` and camelCase: `orderItems_2024` -> order items 2024."""
    return [w.lower() for w in _WORD.findall(_CAMEL.sub(r"\1 \2", text))]


def terms(question: str) -> list[str]:
    """The words of a question worth matching, each once, in order."""
    return list(dict.fromkeys(w for w in words(question) if w not in STOPWORDS))


def stem(word: str) -> str:
    """A crude English stem, enough to match `orders` with `order` and `categories` with `category`."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def similarity(a: str, b: str) -> float:
    """How alike two questions are: shared stemmed terms over the geometric mean of their counts (0 to 1)."""
    x, y = {stem(t) for t in terms(a)}, {stem(t) for t in terms(b)}
    if not x or not y:
        return 0.0
    return len(x & y) / (len(x) * len(y)) ** 0.5
