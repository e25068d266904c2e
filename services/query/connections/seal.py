"""AES-GCM sealing of users' database passwords with CONNECTIONS_KEYS, which only the query service holds.

A sealed password is `nonce (12 bytes) || ciphertext+tag`. The associated data binds it to
the key id, the record id and the owner, so a blob copied to another record or another user
does not open (docs/connections.md).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, field

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.errors import UNAVAILABLE, ConfigError, ServiceError

VARIABLE = "CONNECTIONS_KEYS"
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_NONCE_BYTES = 12


def associated_data(key_id: str, record_id: str, owner: str) -> bytes:
    """The three names a blob is bound to, encoded unambiguously (a MessagePack array)."""
    return msgpack.packb([key_id, record_id, owner])


def generate_entry(key_id: str = "k1") -> str:
    """A new `id:base64` entry for CONNECTIONS_KEYS (32 random bytes)."""
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"


@dataclass(frozen=True)
class Keyring:
    """The keys of CONNECTIONS_KEYS in order; the first seals, every one opens."""

    keys: tuple[tuple[str, AESGCM], ...] = field(repr=False)

    @classmethod
    def parse(cls, raw: str) -> Keyring | None:
        """`id:base64-32-bytes[,id2:...]`; None when empty (the feature is off). A bad entry fails naming the variable, never the key."""
        entries = [item.strip() for item in raw.split(",") if item.strip()]
        if not entries:
            return None
        keys: list[tuple[str, AESGCM]] = []
        for position, entry in enumerate(entries, 1):
            key_id, sep, encoded = entry.partition(":")
            if not sep or not _KEY_ID.match(key_id):
                raise ConfigError(f"{VARIABLE}: entry {position} must look like id:base64 (id of 1-32 letters, digits, '_', '.', '-')")
            try:
                key = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError(f"{VARIABLE}: the key of {key_id!r} is not valid base64") from None
            if len(key) != 32:
                raise ConfigError(f"{VARIABLE}: the key of {key_id!r} must be 32 bytes, got {len(key)}")
            if any(key_id == known for known, _ in keys):
                raise ConfigError(f"{VARIABLE} names key {key_id!r} twice")
            keys.append((key_id, AESGCM(key)))
        return cls(tuple(keys))

    @property
    def current(self) -> str:
        """The id of the key that seals."""
        return self.keys[0][0]

    def seal(self, password: str, record_id: str, owner: str) -> tuple[str, bytes]:
        key_id, aead = self.keys[0]
        nonce = os.urandom(_NONCE_BYTES)
        return key_id, nonce + aead.encrypt(nonce, password.encode(), associated_data(key_id, record_id, owner))

    def open(self, key_id: str, sealed: bytes, record_id: str, owner: str) -> str:
        """The password; ServiceError naming the key id when that key is gone or the blob does not belong to this record."""
        aead = next((a for known, a in self.keys if known == key_id), None)
        if aead is None:
            raise ServiceError(UNAVAILABLE, f"this connection's password was sealed with key {key_id!r}, which is not in {VARIABLE}; add that key back, or enter the password again")
        try:
            return aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], associated_data(key_id, record_id, owner)).decode()
        except (InvalidTag, ValueError, UnicodeDecodeError):
            raise ServiceError(UNAVAILABLE, f"this connection's sealed password does not open with key {key_id!r} for this record; enter the password again") from None
