"""The fixtures choose their servers by what works: a Docker engine that answers but has no images means local servers, with one warning."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import IMAGES, choose_infra
from tests.fake_docker import FakeDocker
from tests.harness import ROOT


@pytest.fixture
async def docker_without_images() -> AsyncIterator[FakeDocker]:
    # A short path: a unix socket's path is limited to ~107 bytes.
    with tempfile.TemporaryDirectory(prefix="dkr-") as directory:
        fake = await FakeDocker(Path(directory) / "docker.sock").start()
        try:
            yield fake
        finally:
            await fake.stop()


async def test_an_engine_that_cannot_pull_an_image_means_local_servers_and_a_warning_that_names_the_image(docker_without_images: FakeDocker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", docker_without_images.docker_host)
    kind, warning = await asyncio.to_thread(choose_infra)
    assert kind == "local"
    assert warning is not None and IMAGES["redis"] in warning and "no such host" in warning
    # It asked the engine for the image and tried to pull it before giving up.
    assert any(r.endswith(f"/images/{IMAGES['redis']}/json") for r in docker_without_images.requests)
    assert any(r.startswith("POST") and r.endswith("/images/create") for r in docker_without_images.requests)


async def test_make_tests_header_says_local_servers_with_one_warning_line(docker_without_images: FakeDocker) -> None:
    env = {**os.environ, "DOCKER_HOST": docker_without_images.docker_host}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", "--collect-only", "-p", "no:cacheprovider", "tests/test_docs.py",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert proc.returncode == 0, text
    warnings = [line for line in text.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, text
    assert warnings[0].startswith("WARNING: a Docker engine answered but the image")
    assert any(line.startswith("servers: local nats-server") for line in text.splitlines()), text
