"""Error codes are a StrEnum whose values are the stable strings on the wire, under their old module-level names too."""

from __future__ import annotations

import json

import pytest

from shared import errors
from shared.codec import decode, encode
from shared.errors import ErrorCode, ServiceError

# The strings callers and other services depend on; changing one is a breaking change of the wire contract.
WIRE_CODES = {
    "BAD_REQUEST": "bad_request",
    "UNAUTHORIZED": "unauthorized",
    "FORBIDDEN": "forbidden",
    "NOT_FOUND": "not_found",
    "QUERY_REFUSED": "query_refused",
    "QUERY_FAILED": "query_failed",
    "QUERY_TIMEOUT": "query_timeout",
    "UNKNOWN_SOURCE": "unknown_source",
    "UNAVAILABLE": "unavailable",
    "TIMEOUT": "timeout",
    "INTERNAL": "internal",
}


def test_every_code_keeps_its_wire_string() -> None:
    assert {member.name: member.value for member in ErrorCode}.items() >= WIRE_CODES.items()


@pytest.mark.parametrize("name", sorted(WIRE_CODES))
def test_module_level_name_is_the_enum_member(name: str) -> None:
    alias = getattr(errors, name)
    assert alias is ErrorCode[name]
    assert alias == WIRE_CODES[name]


@pytest.mark.parametrize("code", list(ErrorCode))
def test_service_error_crosses_msgpack_and_json_as_the_plain_string(code: ErrorCode) -> None:
    error = ServiceError(code, "something clear")
    assert json.loads(json.dumps(error.to_dict())) == {"code": code.value, "message": "something clear"}
    back = ServiceError.from_dict(decode(encode(error.to_dict())))
    assert back.code == code and type(back.code) is str
    assert repr(back) == f"ServiceError({code.value!r}, 'something clear')"
