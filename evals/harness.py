"""The evaluation harness: questions through /api/chat, the model's SQL and the gold SQL through the query service, results compared.

Execution accuracy as Spider and BIRD measure it: an answer is right when its query's
result holds the same rows as the gold query's, as a multiset (in order only when the gold
SQL orders its result), with column names ignored and floats equal within FLOAT_DIGITS
significant digits. The model's query is the last `execute_query` of the turn that
succeeded. Everything goes through a running gateway over HTTP, as the page does.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson
import sqlglot
from sqlglot import exp

from shared.contracts import SchemaSearchReply

FLOAT_DIGITS = 9
"""Floats are compared rounded to this many significant digits (sums in another order differ in the last bits)."""
_NUMBER = frozenset("0123456789.-+eE")


@dataclass(frozen=True)
class Question:
    """One line of a question set (JSONL): `question`, `gold_sql`, `source`, optional `tags` and `id`."""

    id: str
    question: str
    gold_sql: str
    source: str | None = None
    tags: tuple[str, ...] = ()


def load_questions(*paths: Path) -> list[Question]:
    """Every question of the JSONL files; ValueError naming the file and line of a malformed one."""
    questions = []
    for path in paths:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                if not isinstance(raw.get("question"), str) or not isinstance(raw.get("gold_sql"), str):
                    raise ValueError("needs string fields 'question' and 'gold_sql'")
                tags = raw.get("tags") or []
                if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                    raise ValueError("'tags' must be a list of strings")
                questions.append(Question(str(raw.get("id") or f"{path.stem}-{number}"), raw["question"], raw["gold_sql"], raw.get("source") or None, tuple(tags)))
            except (ValueError, AttributeError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
    return questions


def gold_tables(sql: str, dialect: str = "sqlite") -> set[str]:
    """The tables a query reads (CTE names left out)."""
    tree = sqlglot.parse_one(sql, read=dialect)
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    return {t.name for t in tree.find_all(exp.Table)} - ctes


def recall_at(gold: set[str], found: Sequence[str]) -> float:
    """The share of `gold` among `found`."""
    return len(gold & set(found)) / len(gold) if gold else 1.0


class Searches(Protocol):
    """What schema_recall needs of an index (services.query.search.SchemaIndex)."""

    def search(self, question: str, limit: int) -> SchemaSearchReply: ...


def schema_recall(index: Searches, questions: Iterable[Question], k: int = 5) -> float:
    """Mean recall@k of the gold SQL's tables among the tables a schema search returns (no model involved)."""
    recalls = [recall_at(gold_tables(q.gold_sql), [t.name for t in index.search(q.question, k).tables]) for q in questions]
    return statistics.fmean(recalls) if recalls else 0.0


def orders(sql: str, dialect: str = "sqlite") -> bool:
    """Whether the query's own result is ordered (an ORDER BY at its top level)."""
    tree = sqlglot.parse_one(sql, read=dialect)
    return bool(tree.args.get("order"))


def _cell(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value and set(value) <= _NUMBER:
        try:
            value = float(value)  # NUMERIC/DECIMAL arrive as strings
        except ValueError:
            return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        return float(f"{value:.{FLOAT_DIGITS}g}")
    if isinstance(value, (list, dict)):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return value


def _row(row: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(_cell(v) for v in row)


def same_result(gold: Sequence[Sequence[Any]], predicted: Sequence[Sequence[Any]], ordered: bool) -> bool:
    """Execution accuracy's comparison: the same rows (as a multiset unless `ordered`)."""
    a, b = [_row(r) for r in gold], [_row(r) for r in predicted]
    if ordered:
        return a == b
    return Counter(a) == Counter(b)


# --- talking to the gateway ----------------------------------------------------------


@dataclass
class Result:
    rows: list[list[Any]] = field(default_factory=list)
    error: str | None = None
    truncated: bool = False


@dataclass
class Attempt:
    """What one chat turn did: the SQL it ended on, and its cost."""

    sql: str | None = None
    source: str | None = None
    steps: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    error: str | None = None
    tools: list[str] = field(default_factory=list)


async def _parts(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    raw = await response.read()
    parts = []
    for event in raw.split(b"\n\n"):
        payload = event.removeprefix(b"data: ")
        if payload and payload != b"[DONE]":
            parts.append(orjson.loads(payload))
    return parts


async def run_sql(http: aiohttp.ClientSession, sql: str, source: str | None) -> Result:
    """POST /api/query: every row, or the error."""
    body = {"sql": sql, **({"source": source} if source else {})}
    async with http.post("/api/query", json=body) as response:
        if response.status != 200:
            return Result(error=f"HTTP {response.status}: {await response.text()}")
        result = Result()
        for part in await _parts(response):
            match part.get("type"):
                case "data-query-rows":
                    result.rows.extend(part["data"]["rows"])
                case "tool-output-error":
                    result.error = part.get("errorText") or "the query failed"
                case "tool-output-available" if not part.get("preliminary"):
                    result.truncated = bool((part.get("output") or {}).get("truncated"))
        return result


async def ask(http: aiohttp.ClientSession, question: Question) -> Attempt:
    """One turn of POST /api/chat on a new conversation: the last execute_query that succeeded, steps, tokens and time."""
    body: dict[str, Any] = {
        "id": f"eval-{uuid.uuid4().hex[:12]}",
        "messages": [{"id": f"u_{uuid.uuid4().hex[:8]}", "role": "user", "parts": [{"type": "text", "text": question.question}]}],
        "trigger": "submit-message",
    }
    if question.source:
        body["source"] = question.source
    attempt = Attempt()
    started = time.monotonic()
    async with http.post("/api/chat", json=body) as response:
        if response.status != 200:
            attempt.error = f"HTTP {response.status}: {await response.text()}"
            attempt.seconds = time.monotonic() - started
            return attempt
        parts = await _parts(response)
    attempt.seconds = time.monotonic() - started
    calls: dict[str, dict[str, Any]] = {}
    for part in parts:
        kind = part.get("type")
        if kind == "tool-input-available":
            calls[part["toolCallId"]] = {"name": part.get("toolName"), "input": part.get("input") or {}}
            attempt.tools.append(str(part.get("toolName")))
        elif kind == "tool-output-available" and not part.get("preliminary"):
            call = calls.get(part.get("toolCallId", ""))
            output = part.get("output")
            if call and call["name"] == "execute_query" and isinstance(output, dict) and "error" not in output:
                attempt.sql = call["input"].get("sql")
                attempt.source = call["input"].get("source") or question.source
        elif kind == "error":
            attempt.error = part.get("errorText")
        elif kind == "finish":
            meta = part.get("messageMetadata") or {}
            usage = meta.get("usage") or {}
            attempt.steps = int(meta.get("steps") or 0)
            attempt.input_tokens = int(usage.get("inputTokens") or 0)
            attempt.output_tokens = int(usage.get("outputTokens") or 0)
    return attempt


# --- scoring and the report ------------------------------------------------------------


@dataclass
class Outcome:
    question: Question
    attempt: Attempt
    correct: bool
    reason: str


async def score(http: aiohttp.ClientSession, question: Question, attempt: Attempt) -> Outcome:
    """Run the gold SQL and the model's SQL through the query service and compare the results."""
    gold = await run_sql(http, question.gold_sql, question.source)
    if gold.error is not None:
        return Outcome(question, attempt, False, f"the gold SQL failed: {gold.error}")
    if attempt.sql is None:
        return Outcome(question, attempt, False, attempt.error or "no execute_query succeeded")
    predicted = await run_sql(http, attempt.sql, attempt.source)
    if predicted.error is not None:
        return Outcome(question, attempt, False, f"the model's SQL failed when run again: {predicted.error}")
    if same_result(gold.rows, predicted.rows, orders(question.gold_sql)):
        return Outcome(question, attempt, True, "same result")
    return Outcome(question, attempt, False, f"different result: {len(predicted.rows)} rows, the gold SQL gives {len(gold.rows)}")


async def evaluate(http: aiohttp.ClientSession, questions: Iterable[Question]) -> list[Outcome]:
    """Ask and score each question in turn (a session cookie must be in `http` already)."""
    outcomes = []
    for question in questions:
        attempt = await ask(http, question)
        outcomes.append(await score(http, question, attempt))
    return outcomes


@dataclass(frozen=True)
class Summary:
    label: str
    total: int
    correct: int
    by_tag: dict[str, tuple[int, int]]
    mean_steps: float
    input_tokens: int
    output_tokens: int
    mean_seconds: float
    median_seconds: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def summarise(label: str, outcomes: Sequence[Outcome]) -> Summary:
    by_tag: dict[str, list[int]] = {}
    for o in outcomes:
        for tag in o.question.tags or ("untagged",):
            counts = by_tag.setdefault(tag, [0, 0])
            counts[0] += o.correct
            counts[1] += 1
    seconds = [o.attempt.seconds for o in outcomes] or [0.0]
    return Summary(
        label=label,
        total=len(outcomes),
        correct=sum(o.correct for o in outcomes),
        by_tag={tag: (c, n) for tag, (c, n) in sorted(by_tag.items())},
        mean_steps=statistics.fmean(o.attempt.steps for o in outcomes) if outcomes else 0.0,
        input_tokens=sum(o.attempt.input_tokens for o in outcomes),
        output_tokens=sum(o.attempt.output_tokens for o in outcomes),
        mean_seconds=statistics.fmean(seconds),
        median_seconds=statistics.median(seconds),
    )


def _pct(correct: int, total: int) -> str:
    return f"{correct}/{total} = {100 * correct / total:.1f}%" if total else "0/0"


def report(summary: Summary, outcomes: Sequence[Outcome]) -> str:
    """The report of one run: accuracy overall and per tag, steps, tokens, latency, and each failing question with both SQLs."""
    lines = [
        f"== {summary.label}",
        f"execution accuracy: {_pct(summary.correct, summary.total)}",
        f"mean steps: {summary.mean_steps:.2f}   tokens: {summary.input_tokens} in, {summary.output_tokens} out   latency: mean {summary.mean_seconds:.2f} s, median {summary.median_seconds:.2f} s",
        "per tag:",
    ]
    lines += [f"  {tag:<12} {_pct(c, n)}" for tag, (c, n) in summary.by_tag.items()]
    failing = [o for o in outcomes if not o.correct]
    if failing:
        lines.append(f"failing ({len(failing)}):")
    for o in failing:
        lines += [
            f"  [{o.question.id}] {o.question.question}",
            f"    why:   {o.reason}",
            f"    gold:  {o.question.gold_sql}",
            f"    model: {o.attempt.sql or '(none)'}",
        ]
    return "\n".join(lines)


def compare(a: tuple[Summary, Sequence[Outcome]], b: tuple[Summary, Sequence[Outcome]]) -> str:
    """Two runs side by side: the figures, per tag, and the questions they disagree on."""
    (sa, oa), (sb, ob) = a, b
    width = max(len(sa.label), len(sb.label), 12)
    lines = [
        f"== {sa.label} vs {sb.label}",
        f"{'':<16}{sa.label:>{width}}  {sb.label:>{width}}",
        f"{'accuracy':<16}{_pct(sa.correct, sa.total):>{width}}  {_pct(sb.correct, sb.total):>{width}}",
        f"{'mean steps':<16}{sa.mean_steps:>{width}.2f}  {sb.mean_steps:>{width}.2f}",
        f"{'tokens in':<16}{sa.input_tokens:>{width}}  {sb.input_tokens:>{width}}",
        f"{'tokens out':<16}{sa.output_tokens:>{width}}  {sb.output_tokens:>{width}}",
        f"{'mean latency s':<16}{sa.mean_seconds:>{width}.2f}  {sb.mean_seconds:>{width}.2f}",
    ]
    for tag in sorted(set(sa.by_tag) | set(sb.by_tag)):
        lines.append(f"{'  ' + tag:<16}{_pct(*sa.by_tag.get(tag, (0, 0))):>{width}}  {_pct(*sb.by_tag.get(tag, (0, 0))):>{width}}")
    differ = [(x, y) for x, y in zip(oa, ob) if x.correct != y.correct]
    if differ:
        lines.append("they disagree on:")
    for x, _ in differ:
        winner = sa.label if x.correct else sb.label
        lines.append(f"  [{x.question.id}] right only with {winner}: {x.question.question}")
    return "\n".join(lines)
