"""NATS decentralized-auth credentials made in Python, for tests: operator, account and user keys, their JWTs, and .creds files.

What `nsc` would make, without `nsc`: a nats-server in operator mode trusts the operator's
JWT, finds each account's JWT in its resolver (here `resolver: MEMORY` with
`resolver_preload`), and admits a client whose user JWT the account (or one of the account's
signing keys) signed, once the client signs the server's nonce with the user's seed. The
claims follow the v2 format of github.com/nats-io/jwt:

- header `{"typ":"JWT","alg":"ed25519-nkey"}`; the token is base64url(header) "."
  base64url(claims) "." base64url(ed25519 signature of the first two parts by the issuer's
  nkey), all without padding;
- claims `jti`, `iat`, `iss` (the signer's public key), `sub` (the subject's public key),
  `name`, and `nats` holding the type-specific part with `"type"` and `"version": 2`;
- `jti` is what nsc computes: base32 (no padding) of the SHA-512/256 digest of the JSON of
  the standard claims (`aud exp jti iat iss name nbf sub`, empty ones left out) with `jti`
  empty. The server does not check it; it only has to be unique.

Limits use -1 for "no limit", as nsc's defaults do: a 0 would mean "none allowed".
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

UNLIMITED = -1

ACCOUNT_LIMITS: dict[str, Any] = {
    "subs": UNLIMITED,
    "data": UNLIMITED,
    "payload": UNLIMITED,
    "imports": UNLIMITED,
    "exports": UNLIMITED,
    "wildcards": True,
    "conn": UNLIMITED,
    "leaf": UNLIMITED,
}
"""An account's limits as nsc sets them by default."""

JETSTREAM_LIMITS: dict[str, Any] = {"mem_storage": UNLIMITED, "disk_storage": UNLIMITED, "streams": UNLIMITED, "consumer": UNLIMITED}
"""JetStream on for an account, without limits (a storage of 0, the default, means JetStream off for it)."""


@dataclass(frozen=True)
class Key:
    """An nkey: its seed (the secret) and its public key."""

    seed: str
    public: str

    @classmethod
    def new(cls, prefix: int) -> Key:
        """A fresh key of one kind: nkeys.PREFIX_BYTE_OPERATOR, _ACCOUNT or _USER."""
        seed = nkeys.encode_seed(os.urandom(32), prefix)
        return cls(seed.decode(), nkeys.from_seed(seed).public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return nkeys.from_seed(self.seed.encode()).sign(data)


def operator_key() -> Key:
    return Key.new(nkeys.PREFIX_BYTE_OPERATOR)


def account_key() -> Key:
    return Key.new(nkeys.PREFIX_BYTE_ACCOUNT)


def user_key() -> Key:
    return Key.new(nkeys.PREFIX_BYTE_USER)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def jti(claims: dict[str, Any]) -> str:
    """The claims' id as nsc computes it (see the module's docstring)."""
    standard = {name: claims[name] for name in ("aud", "exp", "jti", "iat", "iss", "name", "nbf", "sub") if claims.get(name)}
    standard.pop("jti", None)
    digest = hashlib.new("sha512_256", _json(standard)).digest()
    return base64.b32encode(digest).rstrip(b"=").decode()


def encode(issuer: Key, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A JWT with `nats` as its type-specific claims, issued to `subject` and signed by `issuer`."""
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public, "name": name, "sub": subject}
    claims = {"jti": jti(claims), **claims, "nats": {**nats, "version": 2}}
    signed = _b64(_json({"typ": "JWT", "alg": "ed25519-nkey"})) + "." + _b64(_json(claims))
    return signed + "." + _b64(issuer.sign(signed.encode()))


def decode_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (for tests that look at what they made)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def operator_jwt(operator: Key, name: str = "operator") -> str:
    """A self-signed operator JWT: the root of trust the server is configured with."""
    return encode(operator, operator.public, name, {"type": "operator"})


def account_jwt(operator: Key, account: Key, name: str = "account", *, jetstream: bool = True, signing_keys: tuple[str, ...] = ()) -> str:
    """An account JWT signed by the operator; users signed by `account` or one of `signing_keys` belong to it.

    `jetstream=False` for the system account, which may not have it.
    """
    limits = {**ACCOUNT_LIMITS, **(JETSTREAM_LIMITS if jetstream else {})}
    nats: dict[str, Any] = {"type": "account", "limits": limits, "default_permissions": {"pub": {}, "sub": {}}}
    if signing_keys:
        nats["signing_keys"] = list(signing_keys)
    return encode(operator, account.public, name, nats)


def user_jwt(
    signer: Key,
    user: Key,
    name: str,
    *,
    account: str = "",
    pub: dict[str, list[str]] | None = None,
    sub: dict[str, list[str]] | None = None,
    allow_responses: bool = False,
) -> str:
    """A user JWT signed by `signer`: the account's own key, or a signing key of the account named by `account`.

    `pub` and `sub` are permissions as in a server config (`{"allow": [...], "deny": [...]}`);
    `allow_responses` is the config's `allow_responses = true` (one reply per request received,
    within the server's default time).
    """
    nats: dict[str, Any] = {"type": "user", "pub": pub or {}, "sub": sub or {}, "subs": UNLIMITED, "data": UNLIMITED, "payload": UNLIMITED}
    if allow_responses:
        nats["resp"] = {"max": 0, "ttl": 0}  # 0 and 0: the server's defaults, as allow_responses = true gives
    if account:
        nats["issuer_account"] = account
    return encode(signer, user.public, name, nats)


def creds(token: str, user: Key) -> str:
    """A .creds file's text (what `nsc generate creds` writes): the user JWT, then the user's seed."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{token}\n"
        "------END NATS USER JWT------\n"
        "\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n"
        "\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user.seed}\n"
        "------END USER NKEY SEED------\n"
        "\n"
        "*************************************************************\n"
    )


def write_creds(path: Path, token: str, user: Key) -> Path:
    """Write a .creds file readable by its owner only, as a secret should be, and return its path."""
    path.write_text(creds(token, user))
    path.chmod(0o600)
    return path


def server_config(operator_token: str, system_account: str, accounts: dict[str, str]) -> str:
    """nats-server configuration for operator mode with the memory resolver, preloaded with `accounts` (public key -> JWT).

    `system_account` (one of `accounts`, public key) is the server's own: JetStream will not start
    in operator mode without one.
    """
    preload = "\n".join(f'  {public}: "{token}"' for public, token in accounts.items())
    return f'operator: "{operator_token}"\nsystem_account: {system_account}\nresolver: MEMORY\nresolver_preload: {{\n{preload}\n}}\n'
