"""`make eval` (`python -m evals`): execution accuracy of the configured model on the bundled question sets, or on yours.

Without --gateway it starts a stack of its own (nats-server, redis-server, session, query
with the sample database as `default` and the 336-table schema as `enterprise`, and a
gateway in dev auth) with the model of LLM_BASE_URL / LLM_MODEL / LLM_API_KEY from the
environment. --compare KEY=VALUE,... runs the set a second time with those gateway
settings changed (another LLM_MODEL, LLM_SCHEMA_MAX_CHARS=0, LLM_EXAMPLES=0, ...) and
prints both side by side. docs/accuracy.md explains the report.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from bench.stack import http_ok, running_stack
from evals import enterprise
from evals.harness import Outcome, Question, Summary, compare, evaluate, load_questions, report, schema_recall, summarise
from services.query.engines import EngineSettings, Sources
from services.query.schema import SchemaConfig
from services.query.search import SchemaSearch, SearchConfig
from tests.harness import wait_until

ROOT = Path(__file__).resolve().parent.parent
QUESTION_SETS = {"sample": ROOT / "evals" / "questions" / "sample.jsonl", "enterprise": ROOT / "evals" / "questions" / "enterprise.jsonl"}
WORKDIR = ROOT / "var" / "eval"
EVAL_GATEWAY_ENV = {"CHAT_QUOTA_PER_MINUTE": "0", "CHAT_QUOTA_PER_HOUR": "0", "CHAT_QUOTA_PER_DAY": "0"}


def parse_overrides(spec: str) -> dict[str, str]:
    """`KEY=VALUE,KEY=VALUE` as a dict; ValueError for a piece without `=`."""
    out = {}
    for piece in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = piece.partition("=")
        if not sep or not key:
            raise ValueError(f"--compare wants KEY=VALUE pairs separated by commas, got {piece!r}")
        out[key.strip()] = value
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evals", description=__doc__.splitlines()[0])
    p.add_argument("--set", choices=[*QUESTION_SETS, "all"], default="all", help="bundled question set (default: all)")
    p.add_argument("--questions", type=Path, action="append", help="a JSONL question set of yours, instead of --set (repeatable)")
    p.add_argument("--tag", help="only the questions with this tag")
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--label", default=None, help="name of the run in the report (default: the model)")
    p.add_argument("--compare", metavar="KEY=VALUE,...", help="run again with these gateway settings changed, and compare")
    p.add_argument("--gateway", action="append", metavar="URL", help="use a running gateway (dev auth) instead of starting one; twice with --compare")
    p.add_argument("--recall", action="store_true", help="only schema-search recall@5 on the bundled 336-table schema: no model, no stack")
    return p


async def recall_report() -> str:
    """Schema-search recall@5 of the enterprise questions, with the query service's own index over the bundled schema."""
    WORKDIR.mkdir(parents=True, exist_ok=True)
    path = enterprise.ensure(WORKDIR / "enterprise.db")
    sources = Sources({"enterprise": f"sqlite:///{path}"}, EngineSettings())
    searches = SchemaSearch(sources, SearchConfig(), SchemaConfig())
    try:
        index = await searches.rebuild("enterprise")
        questions = load_questions(QUESTION_SETS["enterprise"])
        return f"schema-search recall@5: {schema_recall(index, questions, 5):.3f} ({len(questions)} questions, {len(index.names)} tables, no model)"
    finally:
        await searches.close()
        await sources.close()


def select(args: argparse.Namespace) -> list[Question]:
    paths = args.questions or (list(QUESTION_SETS.values()) if args.set == "all" else [QUESTION_SETS[args.set]])
    questions = load_questions(*paths)
    if args.tag:
        questions = [q for q in questions if args.tag in q.tags]
    return questions[: args.limit] if args.limit else questions


async def run_against(base_url: str, questions: Sequence[Question], label: str) -> tuple[Summary, list[Outcome]]:
    """Sign in (dev auth) at `base_url` and evaluate every question."""
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(base_url, cookie_jar=aiohttp.CookieJar(unsafe=True), headers={"Origin": base_url.rstrip("/")}, timeout=timeout) as http:
        async with http.post("/auth/login", json={"email": "eval@example.com", "name": "Evaluation"}) as response:
            if response.status != 200:
                raise RuntimeError(f"signing in at {base_url} failed ({response.status}): the gateway must run with AUTH_MODE=dev")
        outcomes = await evaluate(http, questions)
    return summarise(label, outcomes), outcomes


async def _run_own(questions: Sequence[Question], label: str, overrides: dict[str, str]) -> tuple[Summary, list[Outcome]]:
    """Start a stack of our own with these gateway settings, evaluate, stop it."""
    WORKDIR.mkdir(parents=True, exist_ok=True)
    path = enterprise.ensure(WORKDIR / "enterprise.db")
    with running_stack({"enterprise": f"sqlite:///{path}"}, WORKDIR / "sample.db", **(EVAL_GATEWAY_ENV | overrides)) as stack:
        await asyncio.to_thread(wait_until, lambda: http_ok(f"{stack.base_url}/readyz"), 60, "the gateway")
        return await run_against(stack.base_url, questions, label)


async def main_async(argv: Sequence[str] | None = None) -> str:
    """Run the evaluation the arguments ask for; returns the report."""
    args = _parser().parse_args(argv)
    if args.recall:
        return await recall_report()
    questions = select(args)
    if not questions:
        raise SystemExit("no question selected")
    overrides = parse_overrides(args.compare) if args.compare else None
    gateways = args.gateway or []
    if len(gateways) > (2 if overrides is not None else 1):
        raise SystemExit("--gateway once, or twice with --compare")
    label = args.label or os.environ.get("LLM_MODEL") or "model"
    if gateways:
        first = await run_against(gateways[0], questions, label)
    else:
        if not os.environ.get("LLM_BASE_URL"):
            raise SystemExit("set LLM_BASE_URL, LLM_MODEL and LLM_API_KEY (see docs/accuracy.md), or give --gateway URL")
        first = await _run_own(questions, label, {})
    text = report(*first)
    if not args.questions and args.set in ("all", "enterprise"):
        text = await recall_report() + "\n\n" + text  # the bundled schema's search quality, without a model
    if overrides is None:
        return text
    other = ",".join(f"{k}={v}" for k, v in overrides.items())
    if len(gateways) == 2:
        second = await run_against(gateways[1], questions, other)
    elif gateways:
        raise SystemExit("with --gateway, --compare needs a second --gateway for the other settings")
    else:
        second = await _run_own(questions, other, overrides)
    return "\n\n".join([text, report(*second), compare(first, second)])


def main(argv: Sequence[str] | None = None) -> int:
    print(asyncio.run(main_async(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
