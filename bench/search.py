"""`python -m bench.search`: the search_schema index at 5,000 tables (build time, memory, search time) and its recall on the bundled schema.

Each figure is printed beside a baseline measured in the same run: the index build beside
a plain Python inverted index (word -> tables) of the same text, a search beside a scan
that counts the question's words in every table's text, and recall@5 of the ranking
(bm25 + foreign-key lift) beside bm25 alone and beside the scan.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evals import enterprise
from evals.harness import gold_tables, load_questions, recall_at, schema_recall
from services.query import search
from services.query.engines import EngineSettings, Sources
from services.query.schema import SchemaConfig
from services.query.search import INDEX_MEMORY_BOUND, SchemaIndex, SchemaSearch, SearchConfig
from shared.contracts import SchemaColumn, SchemaForeignKey, SchemaReference, SchemaTable
from shared.words import terms, words

QUESTIONS = Path(__file__).resolve().parent.parent / "evals" / "questions" / "enterprise.jsonl"
DOMAINS = ["sales", "billing", "stock", "payroll", "fleet", "helpdesk", "campaign", "vendor", "asset", "project"]


def synthetic_tables(count: int, columns: int = 12) -> list[SchemaTable]:
    """`count` tables of `columns` columns with comments, each with a foreign key to the one before (4 category columns get values in scale())."""
    tables = []
    for i in range(count):
        domain = DOMAINS[i % len(DOMAINS)]
        name = f"{domain}_entity_{i}"
        cols = [SchemaColumn(name="id", type="bigint", primary_key=True, comment=f"Identifier of entity {i}")]
        cols += [SchemaColumn(name=f"attribute_{j}_{DOMAINS[j % len(DOMAINS)]}Value", type="varchar(200)", comment=f"Attribute {j} of the {name} record") for j in range(columns - 1)]
        fks = [SchemaForeignKey(columns=["attribute_0_salesValue"], references=SchemaReference(table=f"{DOMAINS[(i - 1) % len(DOMAINS)]}_entity_{i - 1}", columns=["id"]))] if i else []
        tables.append(SchemaTable(name=name, columns=cols, foreign_keys=fks, row_estimate=1000, comment=f"Records of kind {i} in the {domain} domain"))
    return tables


def _text(table: SchemaTable) -> list[str]:
    return words(table.name) + [w for c in table.columns for w in words(c.name)] + words(table.comment or "") + [w for c in table.columns for w in words(c.comment or "")]


def _median_s(fn: Callable[[], Any], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def scale(count: int = 5000) -> None:
    tables = synthetic_tables(count)
    values = {(t.name, c.name): ["open", "closed", "pending", "on hold", f"archived {i % 7}"] for i, t in enumerate(tables) for c in t.columns[1:5]}
    built: list[SchemaIndex] = []
    build_s = _median_s(lambda: built.append(SchemaIndex.build("bench", "postgres", tables, values)), 3)

    def plain() -> dict[str, set[int]]:
        inverted: dict[str, set[int]] = defaultdict(set)
        for i, t in enumerate(tables):
            for w in _text(t):
                inverted[w].add(i)
        return inverted

    plain_s = _median_s(plain, 3)
    tracemalloc.start()
    index = SchemaIndex.build("bench", "postgres", tables, values)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    texts = [Counter(_text(t)) for t in tables]
    question = "open billing records of kind 4321 in the billing domain"

    def scan() -> list[int]:
        wanted = terms(question)
        scores = [(sum(c[w] for w in wanted), i) for i, c in enumerate(texts)]
        return [i for _, i in sorted(scores, reverse=True)[:10]]

    search_s = _median_s(lambda: index.search(question, 10), 50)
    scan_s = _median_s(scan, 50)
    print(f"index of {count:,} tables of 12 columns")
    print(f"  build: {build_s * 1000:8.1f} ms   (baseline: a Python inverted index of the same words, {plain_s * 1000:.1f} ms)")
    pages, bound = index.database_bytes() / 2**20, INDEX_MEMORY_BOUND / 2**20
    print(f"  memory: {pages:.1f} MiB SQLite pages + {peak / 2**20:.1f} MiB Python peak = {pages + peak / 2**20:.1f} MiB (bound {bound:.0f} MiB)")
    print(f"  search (10 tables, join paths): {search_s * 1e6:8.0f} µs   (baseline: counting the words in every table, {scan_s * 1e6:.0f} µs)")
    for b in built:
        b.close()
    index.close()


async def recall() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = enterprise.ensure(Path(tmp) / "enterprise.db")
        sources = Sources({"enterprise": f"sqlite:///{db}"}, EngineSettings())
        searches = SchemaSearch(sources, SearchConfig(), SchemaConfig())
        try:
            started = time.perf_counter()
            index = await searches.rebuild("enterprise")
            build_s = time.perf_counter() - started
            questions = load_questions(QUESTIONS)
            lifted = search.NEIGHBOUR_WEIGHT
            full = schema_recall(index, questions)
            search.NEIGHBOUR_WEIGHT = 0.0
            try:
                plain = schema_recall(index, questions)
            finally:
                search.NEIGHBOUR_WEIGHT = lifted
            rows = {name: Counter(words(name)) for name in index.names}

            def scanned(question: str) -> list[str]:
                wanted = terms(question)
                return [n for _, n in sorted(((sum(c[w] for w in wanted), n) for n, c in rows.items()), reverse=True)[:5]]

            scan = [recall_at(gold_tables(q.gold_sql), scanned(q.question)) for q in questions]
        finally:
            await searches.close()
            await sources.close()
    print(f"recall@5 on the bundled schema ({len(index.names)} tables, {len(questions)} questions; index built with value samples in {build_s:.1f} s):")
    print(f"  bm25 + foreign-key lift: {full:.3f}")
    print(f"  baseline, bm25 alone:    {plain:.3f}")
    print(f"  baseline, table-name word count: {statistics.fmean(scan):.3f}")


def main() -> int:
    scale()
    asyncio.run(recall())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
