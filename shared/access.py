"""The access policy (ACCESS_POLICY): for each operator source, who may use it and as which database role.

Read by the gateway, which decides per user which sources they may use, and by the query
service, which checks at start that every role the policy names may only read and is granted
to the source's account. See docs/access.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec

from shared.errors import UNKNOWN_SOURCE, ConfigError, ServiceError

DEFAULT_SOURCE = "default"
"""The source a request that names none runs on (QUERY_DATABASE_URL)."""

_ROLE = r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$"
RoleName = Annotated[str, msgspec.Meta(pattern=_ROLE)]
_Strings = Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=320)]], msgspec.Meta(min_length=1)]


class Rule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One rule of a source: who it matches (any of `emails`, `domains`, `groups`) and the role they get (None: the account's own)."""

    emails: _Strings | None = None
    domains: _Strings | None = None
    groups: _Strings | None = None
    role: RoleName | None = None


class _Document(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sources: dict[Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")], list[Rule]]


def unknown_source(name: str) -> ServiceError:
    """The error for a source that does not exist or that this user may not use: the same for both (404)."""
    return ServiceError(UNKNOWN_SOURCE, f"unknown source {name!r}; GET /api/sources lists yours")


@dataclass(frozen=True)
class Principal:
    """Who asks: what a rule can match on."""

    email: str | None
    groups: frozenset[str] = frozenset()

    @property
    def domain(self) -> str | None:
        return self.email.rpartition("@")[2].lower() if self.email and "@" in self.email else None


@dataclass(frozen=True)
class Grant:
    """A source a user may use, and the database role their statements run as (None: the source's own account)."""

    source: str
    role: str | None = None


@dataclass(frozen=True)
class AccessPolicy:
    """The parsed ACCESS_POLICY; `configured` is False when it is unset (then every source is without a rule)."""

    rules: Mapping[str, tuple[Rule, ...]]
    configured: bool = True

    def grant(self, source: str, who: Principal, *, open_without_rule: bool) -> Grant | None:
        """The first rule of `source` that matches `who`; a source without rules is open only if `open_without_rule`."""
        rules = self.rules.get(source)
        if rules is None:
            return Grant(source) if open_without_rule else None
        email = who.email.lower() if who.email else None
        for rule in rules:
            if _matches(rule, email, who.domain, who.groups):
                return Grant(source, rule.role)
        return None

    def roles(self, source: str) -> tuple[str, ...]:
        """Every database role the rules of `source` name, in order, once each."""
        return tuple(dict.fromkeys(rule.role for rule in self.rules.get(source, ()) if rule.role))


def _matches(rule: Rule, email: str | None, domain: str | None, groups: frozenset[str]) -> bool:
    if rule.emails and email is not None and email in {e.lower() for e in rule.emails}:
        return True
    if rule.domains and domain is not None and domain in {d.lstrip("@").lower() for d in rule.domains}:
        return True
    return bool(rule.groups and groups.intersection(rule.groups))


EMPTY = AccessPolicy({}, configured=False)


def parse_policy(raw: str, variable: str = "ACCESS_POLICY") -> AccessPolicy:
    """ACCESS_POLICY: the policy as JSON, or a path to a JSON or YAML file; empty is no policy."""
    raw = raw.strip()
    if not raw:
        return EMPTY
    where = variable
    if raw.startswith("{"):
        document: Any = _json(raw, where)
    else:
        path = Path(raw)
        where = f"{variable} ({raw})"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{where} cannot be read: {exc.strerror or exc}") from None
        document = _yaml(text, where) if path.suffix.lower() in (".yaml", ".yml") else _json(text, where)
    try:
        parsed = msgspec.convert(document, _Document)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where} is malformed: {exc}") from None
    for source, rules in parsed.sources.items():
        for index, rule in enumerate(rules):
            if not (rule.emails or rule.domains or rule.groups):
                raise ConfigError(f"{where} is malformed: rule {index} of source {source!r} matches nobody (give emails, domains or groups)")
    return AccessPolicy({source: tuple(rules) for source, rules in parsed.sources.items()})


def _json(text: str, where: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc}") from None


def _yaml(text: str, where: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(exc).split())}") from None


def groups_of(user: Mapping[str, Any] | str | None) -> frozenset[str]:
    """The groups kept in a session's user map (`groups`, from AUTH_GROUPS_CLAIM or the dev login)."""
    if not isinstance(user, Mapping):
        return frozenset()
    return frozenset(clean_groups(user.get("groups")))


MAX_GROUPS = 200
_GROUP = re.compile(r"^[^\x00-\x1f]{1,256}$")


def clean_groups(value: Any) -> list[str]:
    """A claim's groups as a list of strings: a list of strings, or one string (some providers send one)."""
    items: Sequence[Any] = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return [item for item in items if isinstance(item, str) and _GROUP.match(item)][:MAX_GROUPS]
