"""Real clusters on loopback for the tests: a 3-master + 3-replica Redis Cluster and a 3-node NATS JetStream cluster.

Each node is a real server process on free ports; the Redis Cluster is joined by
`redis-cli --cluster create` and each NATS node routes to the others. Readiness is awaited
on the servers' own lines and on `CLUSTER INFO`.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import redis

from tests.harness import NatsServer, RedisServer, free_port, nats_server_binary, wait_until

REDIS_NODE_TIMEOUT_MS = 1000
"""How long a master may be silent before its replica takes over: short, so a failover test is quick."""


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free port whose cluster-bus port (+10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 < 65536 and _bindable(port + 10000):
            return port


class RedisClusterNode(RedisServer):
    """One redis-server with `--cluster-enabled yes`, its nodes.conf in its own directory."""

    def __init__(self) -> None:
        super().__init__()
        self.port = cluster_port()
        self.argv[self.argv.index("--port") + 1] = str(self.port)
        self.argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(REDIS_NODE_TIMEOUT_MS)]

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)


class RedisClusterServers:
    """Six nodes joined as three masters with a replica each."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [RedisClusterNode() for _ in range(masters * 2)]

    @property
    def url(self) -> str:
        """A `redis+cluster://` URL naming one node: the client discovers the others."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    @property
    def seed_url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        assert cli, "redis-cli is needed to join the cluster"
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run([cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        wait_until(self.healthy, timeout=30, what="the Redis Cluster to cover every slot with a synced replica")
        return self

    def healthy(self) -> bool:
        """Every running node sees the cluster ok, and every master has a replica that finished its sync."""
        for node in self.nodes:
            if node.running and node.client().execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                return False
        return sum(node.running and node.client().info("replication").get("master_link_status") == "up" for node in self.nodes) == len(self.masters())

    def masters(self) -> list[RedisClusterNode]:
        return [node for node in self.nodes if node.running and node.client().info("replication")["role"] == "master"]

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=next(n for n in self.nodes if n.running).port, socket_timeout=5)

    def master_of(self, key: str) -> RedisClusterNode:
        """The node serving `key`'s slot now, as CLUSTER SLOTS says."""
        slot = self.client().keyslot(key)
        seed = next(n for n in self.nodes if n.running)
        for start, end, master, *_ in seed.client().execute_command("CLUSTER SLOTS"):
            if int(start) <= slot <= int(end):
                return next(n for n in self.nodes if n.port == int(master[1]))
        raise LookupError(f"no master serves slot {slot}")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


class NatsClusterNode(NatsServer):
    """One nats-server with JetStream, in a named cluster routing to its peers."""

    def __init__(self, name: str, cluster_port: int, routes: list[int], *, extra: list[str] | None = None) -> None:
        super().__init__()
        self.cluster_port = cluster_port
        self.monitor_port = free_port()
        self.argv = [
            nats_server_binary(),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-n",
            name,
            "-m",
            str(self.monitor_port),
            "-js",
            "-sd",
            self.store,
            "--cluster_name",
            "dbgenie",
            "--cluster",
            f"nats://127.0.0.1:{cluster_port}",
            "--routes",
            ",".join(f"nats://127.0.0.1:{p}" for p in routes if p != cluster_port),
            *(extra or []),
        ]

    def client_names(self) -> list[str]:
        """The names of the clients connected to this node now (its /connz monitoring endpoint)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/connz", timeout=5) as response:
            return [conn.get("name", "") for conn in json.load(response).get("connections") or []]


class NatsCluster:
    """Three JetStream nodes routed to each other; `url` lists them all, as NATS_URL does in production."""

    def __init__(self, size: int = 3, *, config: Path | None = None) -> None:
        cluster_ports = [free_port() for _ in range(size)]
        extra = ["-c", str(config)] if config else None
        self.nodes = [NatsClusterNode(f"n{i}", port, cluster_ports, extra=extra) for i, port in enumerate(cluster_ports)]

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def start(self) -> NatsCluster:
        for node in self.nodes:
            node.start()
        for node in self.nodes:  # JetStream answers once the meta group has a leader
            node.wait_for_line(lambda line: "JetStream cluster new metadata leader" in line or "Self is new JetStream cluster metadata leader" in line, timeout=60)
        return self

    def node_of(self, client_name: str) -> NatsClusterNode:
        return next(node for node in self.nodes if node.running and client_name in node.client_names())

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


def temp_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
