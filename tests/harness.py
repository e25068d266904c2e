"""Real servers and service processes for the tests: nats-server, redis-server, and our services.

Each process is started on a free port, its output is read line by line in a thread, and
readiness is awaited on the line the process prints when it is ready (never a sleep).
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

from scripts.servers import nats_server_binary, redis_server_binary

ROOT = Path(__file__).resolve().parent.parent


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS = random.Random()


def free_port() -> int:
    """A loopback port free now, below the ephemeral range where the kernel picks the local ports
    of outgoing connections: a server started on it a moment later cannot find it taken by a
    client socket ("Address already in use"), as a port from bind(0) could be."""
    high = _ephemeral_low()
    for _ in range(50):
        port = _PORTS.randrange(max(1024, high - 12000), high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child process whose merged output is collected and can be waited on."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self._eof = False
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Process:
        with self._new_line:
            self.lines = []
            self._eof = False
            self.proc = subprocess.Popen(
                self.argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                env=self.env,
                cwd=self.cwd,
            )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        # After a restart, this thread may still be finishing the previous process's output:
        # only the current process's lines and end of output count.
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                with self._new_line:
                    if proc is self.proc:
                        self.lines.append(line.rstrip("\n"))
                    self._new_line.notify_all()
        with self._new_line:
            if proc is self.proc:
                self._eof = True
            self._new_line.notify_all()

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float = 30.0, start: int = 0) -> str:
        deadline = time.monotonic() + timeout
        seen = start
        with self._new_line:
            while True:
                while seen < len(self.lines):
                    line = self.lines[seen]
                    seen += 1
                    if predicate(line):
                        return line
                if self._eof and seen >= len(self.lines):  # the process closed its output: no line will come
                    raise RuntimeError(f"{self.name} closed its output (exit code {self.proc.poll() if self.proc else None}):\n" + "\n".join(self.lines[-40:]))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.name} did not print the awaited line in {timeout}s:\n" + "\n".join(self.lines[-40:]))
                self._new_line.wait(min(remaining, 0.5))

    def events(self, name: str | None = None) -> list[dict]:
        """The JSON log lines this process printed, optionally only those with event == name."""
        out = []
        for line in list(self.lines):
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if name is None or event.get("event") == name:
                out.append(event)
        return out

    def send_signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` and wait for the exit code; kill after `timeout`."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class NatsServer(Process):
    """A private nats-server with JetStream on a fixed free port, restartable on that port."""

    def __init__(self, jetstream: bool = True) -> None:
        self.port = free_port()
        self.store = tempfile.mkdtemp(prefix="nats-js-")
        argv = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port)]
        if jetstream:
            argv += ["-js", "-sd", self.store]
        super().__init__("nats-server", argv)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        super().start()
        self.wait_for_line(lambda line: "Server is ready" in line)
        return self

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.store, ignore_errors=True)


class RedisServer(Process):
    """A private redis-server with no persistence on a fixed free port, restartable on that port.

    Its working directory (`--dir`) is a temporary one of its own: an RDB file that a test makes
    it write (SAVE, a replica's sync) never lands where a later server would load it.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-")
        # A replica's sync starts at once: by default a master waits 5 s for more replicas to share one diskless transfer.
        argv = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", "", "--appendonly", "no", "--logfile", ""]
        argv += ["--repl-diskless-sync-delay", "0"]
        super().__init__("redis-server", argv)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        super().start()
        self.wait_for_line(lambda line: "Ready to accept connections" in line)
        return self

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresCluster:
    """A private PostgreSQL cluster that checks passwords (scram-sha-256 for every connection), on a free loopback port.

    For the one thing the shared local server cannot show: it trusts loopback, so any password
    works there. initdb and pg_ctl come from PG_BINDIR, else `pg_config --bindir`, else PATH.
    PostgreSQL refuses to run as root: under root they run as the `postgres` OS user (the owner
    of Debian's server), which then owns the temporary directory holding the data, the socket
    and the server's log.
    """

    OS_USER = "postgres"
    SUPERUSER = "postgres"

    def __init__(self) -> None:
        self.bindir = _postgres_bindir()
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.dir = Path(tempfile.mkdtemp(prefix="pg-scram-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._owner: tuple[int, int] | None = None  # uid, gid the tools run as, when not ours
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(self.OS_USER)
            except KeyError:
                raise RuntimeError(f"PostgreSQL will not run as root, and there is no {self.OS_USER!r} OS user to run it as") from None
            os.chown(self.dir, account.pw_uid, account.pw_gid)
            self._owner = account.pw_uid, account.pw_gid

    @property
    def admin_url(self) -> str:
        return f"postgresql://{self.SUPERUSER}:{self.password}@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        argv = [str(self.bindir / tool), *args]
        if self._owner is None:
            done = subprocess.run(argv, cwd=self.dir, capture_output=True, text=True, timeout=120)
        else:
            uid, gid = self._owner
            done = subprocess.run(argv, cwd=self.dir, capture_output=True, text=True, timeout=120, user=uid, group=gid, extra_groups=[])
        if done.returncode != 0:
            server_log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}{server_log}")

    def start(self) -> PostgresCluster:
        password_file = self.dir / "superuser-password"
        password_file.write_text(self.password + "\n")
        if self._owner is not None:
            os.chown(password_file, *self._owner)
        try:
            self._run("initdb", "-D", str(self.data), "--auth=scram-sha-256", "-U", self.SUPERUSER, f"--pwfile={password_file}", "-E", "UTF8", "--no-sync")
        finally:
            password_file.unlink()
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "-t", "60", "start")
        return self

    def cleanup(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _postgres_bindir() -> Path:
    """Where initdb and pg_ctl are: PG_BINDIR, else `pg_config --bindir`, else the directory of initdb on PATH."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    if pg_config := shutil.which("pg_config"):
        candidates.append(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30).stdout.strip())
    if initdb := shutil.which("initdb"):
        candidates.append(str(Path(initdb).resolve().parent))
    for candidate in filter(None, candidates):
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    raise RuntimeError("no initdb and pg_ctl of PostgreSQL found (set PG_BINDIR, or put pg_config or initdb on PATH; Debian: apt-get install postgresql)")


def service_env(**overrides: str) -> dict[str, str]:
    """The environment a service process gets: this one, minus our own settings, plus overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBG_", "QUERY_", "SESSION_", "GATEWAY_", "REDIS_", "UPSTASH_", "AUTH_", "CONNECTIONS_"))}
    env.pop("NATS_URL", None)
    # Tests read a service's log right after what it logs: lines go out at each loop turn, not up to 50 ms later.
    env.update({"LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1", "LOG_FLUSH_MS": "0"})
    env.update(overrides)
    return env


class Service(Process):
    """One of our services run as `python -m services.<name>`; ready when it logs `service_ready`."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        super().__init__(name, [sys.executable, "-m", f"services.{name}"], env=env, cwd=ROOT)

    def start(self, timeout: float = 60.0) -> Service:
        super().start()
        return self.ready(timeout)

    def launch(self) -> Service:
        """Start the process without waiting: start several, then wait for each with `ready`."""
        super().start()
        return self

    def ready(self, timeout: float = 60.0) -> Service:
        self.wait_for_line(lambda line: '"service_ready"' in line, timeout=timeout)
        return self


def http_status(url: str, headers: dict[str, str] | None = None) -> int | None:
    """The status of a GET, or None when nothing answers (the listener is closed)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll a cheap predicate against a real system until it holds (for outcomes with no event to await)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        threading.Event().wait(0.05)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0) -> None:
    """wait_until for an async check (a query to the database, a log to appear): poll until it holds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
