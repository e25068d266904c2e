"""`python -m services.session.admin examples ...`: list, approve, delete and verify the verified examples, over NATS.

    examples list [--source S] [--status pending|approved]
    examples approve SOURCE ID
    examples delete SOURCE ID
    examples verify [--source S]

It talks to the running session service (`session.examples.*`) and, for `verify`, to the
query service, which runs every example's SQL again exactly as a user's query (guard, role,
limits): an example whose SQL now fails, or whose result has other columns than when it was
taught, is flagged, and a flagged example is not given to the model until it is approved
again. Reads NATS_URL and NATS_SUBJECT_PREFIX like the services.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from nats.aio.client import Client as NATS

from shared.bus import close, connect, request
from shared.config import env_str
from shared.contracts import Example, ExampleFlag, ExampleList, ExampleRef, ExampleReply, ExamplesReply, Ok, StreamEnd, StreamError, StreamMeta, Subjects
from shared.errors import ServiceError
from shared.stream import StreamConsumer

TIMEOUT_S = 10.0
VERIFY_IDLE_S = 60.0


def add_parser(sub: Any) -> None:
    examples = sub.add_parser("examples", help="verified examples: list, approve, delete, verify (over NATS)")
    commands = examples.add_subparsers(dest="examples_command", required=True)
    ls = commands.add_parser("list", help="list examples, oldest first")
    ls.add_argument("--source")
    ls.add_argument("--status", choices=["pending", "approved"])
    for name, text in (("approve", "approve a pending (or flagged) example"), ("delete", "delete an example")):
        command = commands.add_parser(name, help=text)
        command.add_argument("source")
        command.add_argument("id")
    verify = commands.add_parser("verify", help="run every example's SQL again; flag those that fail or return other columns")
    verify.add_argument("--source")


async def columns_now(nc: NATS, subjects: Subjects, example: Example) -> list[str]:
    """The column names of the example's SQL run now (ServiceError when it fails)."""
    consumer = StreamConsumer(nc, subjects, idle_timeout_s=VERIFY_IDLE_S)
    try:
        await consumer.start(example.sql, example.source)
        columns: list[str] = []
        async for message in consumer.messages():
            match message:
                case StreamMeta(columns=found):
                    columns = [c.name for c in found]
                case StreamError(error=error):
                    raise ServiceError(error.code, error.message)
                case StreamEnd():
                    return columns
        return columns
    finally:
        await consumer.close()


async def verify(nc: NATS, subjects: Subjects, examples: list[Example], out: TextIO) -> int:
    """Check each example; set or clear its flag. Returns how many are flagged now."""
    flagged = 0
    for example in examples:
        try:
            now = await columns_now(nc, subjects, example)
            flag = None if not example.columns or now == example.columns else f"returns columns {now}, taught with {example.columns}"
        except ServiceError as exc:
            flag = f"fails: {exc.message}"
        if flag != example.flag:
            await request(nc, subjects.session_examples("flag"), ExampleFlag(source=example.source, id=example.id, flag=flag), timeout=TIMEOUT_S, reply=ExampleReply)
        flagged += flag is not None
        print(f"{example.source}/{example.id}: {'FLAGGED ' + flag if flag else 'ok'}", file=out)
    print(f"{len(examples)} example(s) verified, {flagged} flagged", file=out)
    return flagged


def _line(e: Example) -> str:
    when = dt.datetime.fromtimestamp(e.created_at / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")
    state = e.status + (" FLAGGED" if e.flag else "")
    extra = (f"\n    note: {e.note}" if e.note else "") + (f"\n    flag: {e.flag}" if e.flag else "")
    return f"{e.source:<16} {e.id:<16} {state:<17} {when}  {e.author}  {e.question!r}\n    {' '.join(e.sql.split())}" + extra


async def run(args: argparse.Namespace, env: Mapping[str, str], out: TextIO = sys.stdout) -> int:
    nc = await connect(env_str(env, "NATS_URL", "nats://127.0.0.1:4222"), "examples-admin", connect_deadline_s=5.0)
    subjects = Subjects(env_str(env, "NATS_SUBJECT_PREFIX", "dbgenie"))
    try:
        command = args.examples_command
        if command in ("approve", "delete"):
            kind = ExampleReply if command == "approve" else Ok
            await request(nc, subjects.session_examples(command), ExampleRef(source=args.source, id=args.id, by="admin"), timeout=TIMEOUT_S, reply=kind)
            print(f"{args.source}/{args.id}: {'approved' if command == 'approve' else 'deleted'}", file=out)
            return 0
        status = getattr(args, "status", None)
        listed = await request(nc, subjects.session_examples("list"), ExampleList(source=args.source, status=status), timeout=TIMEOUT_S, reply=ExamplesReply)
        if command == "list":
            for example in listed.examples:
                print(_line(example), file=out)
            print(f"{len(listed.examples)} example(s)", file=out)
            return 0
        return 1 if await verify(nc, subjects, listed.examples, out) else 0
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 3
    finally:
        await close(nc)


def main(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    return asyncio.run(run(args, env))
