"""`make bench`: run every benchmark part in turn (session, query, scale, chat, web, messages, audit, connections, search); `python -m bench session` runs one."""

from __future__ import annotations

import importlib
import sys

PARTS = ("session", "query", "scale", "chat", "web", "messages", "audit", "connections", "search")


def main() -> int:
    wanted = sys.argv[1:] or list(PARTS)
    unknown = [p for p in wanted if p not in PARTS]
    if unknown:
        print(f"unknown part(s) {unknown}; choose from {PARTS}", file=sys.stderr)
        return 2
    failed = []
    for part in wanted:
        print(f"\n=== bench: {part} ===", flush=True)
        module = importlib.import_module(f"bench.{part}")
        if module.main() not in (None, 0):
            failed.append(part)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
