"""A SQLite result whose rows suddenly grow far longer is read by bytes, not cut off.

Batches are sized from the rows before them. When the rows grow by more than the fetch
budget allows within one batch, SQLite (which measures each row as it reads it) stops the
fetch at its budget and says the result is not finished, so the query service goes on
instead of ending the query with an error.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import nats
import orjson

from shared.contracts import StreamEnd, StreamError, StreamMeta, StreamRows, Subjects
from shared.stream import StreamConsumer
from tests.conftest import Infra
from tests.harness import Service, free_port, service_env

SMALL, LONG, LONG_CHARS = 20_000, 300, 50_000
# 20,000 rows of a few bytes, then 300 of 50 KB: the batch sized from the short rows holds
# all 300 long ones, 15 MB, where the fetch budget is 16 x 64 KiB = 1 MiB.
GROWING = (
    f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {SMALL + LONG}) "
    f"SELECT i, CASE WHEN i > {SMALL} THEN substr(hex(zeroblob({LONG_CHARS // 2})), 1, {LONG_CHARS}) ELSE '' END AS v FROM n"
)


async def test_rows_that_grow_85_times_longer_within_a_batch_arrive_whole(infra: Infra, tmp_path: Path) -> None:
    prefix = f"f{uuid.uuid4().hex[:10]}"
    env = service_env(
        NATS_URL=infra.nats_url,
        NATS_SUBJECT_PREFIX=prefix,
        OPS_PORT=str(free_port()),
        QUERY_SAMPLE_PATH=str(tmp_path / "sample.db"),
        QUERY_MAX_ROW_BYTES="65536",
        QUERY_MAX_CELL_BYTES="65536",
    )
    service = Service("query", env).start()
    nc = await nats.connect(infra.nats_url)
    try:
        consumer = StreamConsumer(nc, Subjects(prefix))
        await consumer.start(GROWING, None)
        rows: list[list[object]] = []
        end: StreamEnd | None = None
        try:
            async for message in consumer.messages():
                match message:
                    case StreamRows(offset=offset, rows=body):
                        assert offset == len(rows)
                        rows.extend(orjson.loads(body))
                    case StreamEnd():
                        end = message
                    case StreamError(error=error):
                        raise AssertionError(f"the query ended with an error: {error.message}")
                    case StreamMeta():
                        pass
        finally:
            await consumer.close()
        assert end == StreamEnd(row_count=SMALL + LONG, truncated=False)
        assert [row[0] for row in rows] == list(range(1, SMALL + LONG + 1))
        assert all(row[1] == "" for row in rows[:SMALL])
        assert all(row[1] == "0" * LONG_CHARS for row in rows[SMALL:])
        # The end message goes out before the service logs the query: wait for the line.
        service.wait_for_line(lambda line: '"query_done"' in line, timeout=10)
        done = service.events("query_done")
        assert [event["row_count"] for event in done] == [SMALL + LONG]
    finally:
        await nc.close()
        assert service.stop() == 0, "\n".join(service.lines[-30:])
