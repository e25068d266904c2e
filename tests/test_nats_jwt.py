"""NATS_CREDS end to end: the services against a real nats-server in operator mode (JWT auth, memory resolver).

The operator, the accounts, the users and their .creds files are made in Python
(tests/nats_jwt.py). Each service connects with its own user JWT, whose permissions are
read from deploy/nats/authorization.conf, so an operator set-up carrying the same
permissions is shown to run the whole system. A user JWT that denies a subject the service
needs is refused for that subject (checked by effect), and a user signed by a key the
account does not trust is refused at connect: the service exits with one JSON line and
code 2, as for the other refused credentials.
"""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from services.gateway.config import GatewayConfig
from shared.bus import connect, subscribed
from shared.codec import decode_map, encode
from shared.contracts import Subjects
from shared.errors import ConfigError
from tests import nats_jwt
from tests.conftest import SystemFactory
from tests.harness import ROOT, NatsServer, Process, free_port, service_env
from tests.test_nats_permissions import assert_serves_without_nats_errors

AUTHORIZATION = ROOT / "deploy" / "nats" / "authorization.conf"


def authorization_conf_permissions() -> dict[str, dict[str, Any]]:
    """Each service's permissions in deploy/nats/authorization.conf (`GATEWAY = { publish = [...] ... }`), keyed by service name.

    Read from the file rather than copied here, so the JWTs carry whatever the file grants.
    """
    text = "\n".join(line.split("#", 1)[0] for line in AUTHORIZATION.read_text().splitlines())
    found = {}
    for name, body in re.findall(r"^\s*([A-Z]+)\s*=\s*\{(.*?)\}", text, re.M | re.S):
        lists = {key: re.findall(r'"([^"]+)"', value) for key, value in re.findall(r"(publish|subscribe)\s*=\s*\[(.*?)\]", body, re.S)}
        found[name.lower()] = {
            "pub": {"allow": lists["publish"]},
            "sub": {"allow": lists["subscribe"]},
            "allow_responses": bool(re.search(r"allow_responses\s*=\s*true", body)),
        }
    assert set(found) == {"gateway", "session", "query"}, f"the services' permissions in {AUTHORIZATION.name}: {sorted(found)}"
    return found


@dataclass
class Operator:
    """A nats-server in operator mode trusting one application account, and the keys to make its users."""

    server: NatsServer
    account: nats_jwt.Key
    signing_key: nats_jwt.Key
    """A signing key the account's JWT lists: the services' users are signed with it, as nsc advises."""
    folder: Path

    def creds(self, name: str, *, signer: nats_jwt.Key | None = None, **permissions: Any) -> str:
        """A .creds file for a new user `name` of the account, signed by `signer` (default: the account's signing key)."""
        user = nats_jwt.user_key()
        token = nats_jwt.user_jwt(signer or self.signing_key, user, name, account=self.account.public, **permissions)
        return str(nats_jwt.write_creds(self.folder / f"{name}-{uuid.uuid4().hex[:8]}.creds", token, user))


@pytest.fixture(scope="module")
def operator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    folder = tmp_path_factory.mktemp("operator")
    root, system, account, signing_key = nats_jwt.operator_key(), nats_jwt.account_key(), nats_jwt.account_key(), nats_jwt.account_key()
    accounts = {
        system.public: nats_jwt.account_jwt(root, system, "SYS", jetstream=False),
        account.public: nats_jwt.account_jwt(root, account, "DBGENIE", signing_keys=(signing_key.public,)),
    }
    config = folder / "operator.conf"
    config.write_text(nats_jwt.server_config(nats_jwt.operator_jwt(root, "dbgenie-test"), system.public, accounts))
    server = NatsServer()
    server.argv += ["-c", str(config)]
    server.start()
    yield Operator(server, account, signing_key, folder)
    server.cleanup()


def test_the_generated_jwts_carry_the_claims_nsc_writes() -> None:
    root, account = nats_jwt.operator_key(), nats_jwt.account_key()
    claims = nats_jwt.decode_claims(nats_jwt.account_jwt(root, account, "A"))
    assert claims["iss"] == root.public and claims["sub"] == account.public and claims["nats"]["type"] == "account" and claims["nats"]["version"] == 2
    assert claims["jti"] == nats_jwt.jti(claims) and len(claims["jti"]) == 52, "base32 of a 32-byte digest, no padding"


async def test_every_service_runs_with_a_user_jwt_carrying_the_authorization_conf_permissions(operator: Operator, make_system: SystemFactory) -> None:
    permissions = authorization_conf_permissions()
    system = make_system(nats_url=operator.server.url, start=(), NATS_SUBJECT_PREFIX="dbgenie")
    for name in ("session", "query", "gateway"):
        system.start(name, NATS_CREDS=operator.creds(name, **permissions[name]))
    await assert_serves_without_nats_errors(system)
    for name, service in system.services.items():
        assert service.events("service_ready"), name


async def test_a_user_jwt_denying_the_reply_subject_keeps_the_service_from_answering(operator: Operator, make_system: SystemFactory) -> None:
    """The session service's user may publish anything but the gateway's inbox: its reply to a ping is refused by the server."""
    system = make_system(nats_url=operator.server.url, start=(), NATS_SUBJECT_PREFIX="dbgenie")
    session = system.start("session", NATS_CREDS=operator.creds("session", pub={"deny": ["_INBOX.gateway.>"]}))
    gateway = await nats.connect(operator.server.url, user_credentials=operator.creds("gateway"), allow_reconnect=False)
    try:
        inbox = f"_INBOX.gateway.{uuid.uuid4().hex}"
        replies: list[Msg] = []

        async def collect(msg: Msg) -> None:
            replies.append(msg)

        await gateway.subscribe(inbox, cb=collect)
        await subscribed(gateway)  # else the absence of a reply below would prove nothing
        subject = Subjects("dbgenie").session_ping

        # The same service answers a ping on an inbox its JWT does not deny (nats-py's default `_INBOX.`): the refusal below is the deny, nothing else.
        allowed = await gateway.request(subject, encode({}), timeout=10)
        assert decode_map(allowed.data)["ok"] is True

        seen = len(session.lines)
        await gateway.publish(subject, encode({}), reply=inbox)
        await gateway.flush()
        line = session.wait_for_line(lambda line: '"nats_error"' in line and "permissions violation for publish" in line.lower(), start=seen)
        assert inbox.lower() in line.lower(), line  # nats-py lowercases the server's error
        # The server refused the reply before it told the service so: a reply it had delivered would be ahead of this PONG.
        await gateway.flush()
        assert replies == [], "the refused reply never reached the gateway's inbox"
    finally:
        await gateway.close()


async def test_connect_admits_a_trusted_user_and_refuses_one_signed_by_an_untrusted_key(operator: Operator) -> None:
    trusted = GatewayConfig.from_env({"NATS_URL": operator.server.url, "NATS_CREDS": operator.creds("gateway")})
    nc = await connect(trusted.nats_url, "gateway", credentials=trusted.nats_credentials, connect_deadline_s=5)
    try:
        assert nc.is_connected
    finally:
        await nc.close()
    # The same account named as issuer, but the JWT is signed by an account key its JWT does not list.
    forged = GatewayConfig.from_env({"NATS_URL": operator.server.url, "NATS_CREDS": operator.creds("gateway", signer=nats_jwt.account_key())})
    with pytest.raises(ConfigError, match="refused the credentials of gateway \\(NATS_CREDS\\)"):
        await connect(forged.nats_url, "gateway", credentials=forged.nats_credentials, connect_deadline_s=5)


def test_a_service_with_a_user_signed_by_an_untrusted_key_exits_with_one_json_line(operator: Operator) -> None:
    creds = operator.creds("session", signer=nats_jwt.account_key())
    seed = re.search(r"\bSU[A-Z0-9]{56}\b", Path(creds).read_text())
    assert seed is not None
    env = service_env(NATS_URL=operator.server.url, NATS_CREDS=creds, OPS_PORT=str(free_port()), NATS_SUBJECT_PREFIX="dbgenie")
    service = Process("session", [sys.executable, "-m", "services.session"], env=env, cwd=ROOT).start()
    code = service.proc.wait(60)  # type: ignore[union-attr]
    service.wait_for_line(lambda line: '"service_failed"' in line, timeout=10)
    failed = service.events("service_failed")
    assert code == 2 and len(failed) == 1
    assert failed[0]["reason"] == "configuration" and "refused the credentials of session (NATS_CREDS)" in failed[0]["error"]
    assert not any(seed.group() in line for line in service.lines), "the seed is never printed"
