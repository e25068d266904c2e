"""Which operator sources a user may use, and as which database role: the one place handlers ask.

The policy is ACCESS_POLICY (shared/access.py). A source without a rule (every source, when
no policy is set) is open in dev mode and closed under AUTH_MODE=firebase|oidc: deny by
default, and the gateway logs once at start which sources nobody can reach.
A source the user may not use is answered exactly as an unknown one is (404 `unknown_source`),
so its name is not given away.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import structlog
from aiohttp import web

from services.gateway import keys
from services.gateway.config import GatewayConfig
from shared.access import DEFAULT_SOURCE, Grant, Principal, groups_of, unknown_source
from shared.contracts import Caller
from shared.errors import ServiceError
from shared.users import signed_in_user, user_id

log = structlog.get_logger(__name__)


def principal(user: Mapping[str, Any] | str | None) -> Principal:
    """What a rule matches on, from a session's user map."""
    email = user.get("email") if isinstance(user, Mapping) else None
    return Principal(email if isinstance(email, str) else None, groups_of(user))


def _open_without_rule(config: GatewayConfig) -> bool:
    return not config.token_login


def source_grant(config: GatewayConfig, session: Mapping[str, Any], source: str | None) -> Grant:
    """The grant for `source` (None: the default source), or raise unknown_source (404)."""
    name = source or DEFAULT_SOURCE
    found = config.access_policy.grant(name, principal(signed_in_user(session)), open_without_rule=_open_without_rule(config))
    if found is None:
        raise unknown_source(name)
    return found


def visible_sources(config: GatewayConfig, session: Mapping[str, Any], names: Iterable[str]) -> dict[str, Grant]:
    """The sources among `names` this user may use, with their grants, in order."""
    who = principal(signed_in_user(session))
    open_without_rule = _open_without_rule(config)
    return {name: grant for name in names if (grant := config.access_policy.grant(name, who, open_without_rule=open_without_rule)) is not None}


def caller(session: Mapping[str, Any], grant: Grant) -> Caller:
    """Who the query service runs the statement for: the grant's role, the user's id and email."""
    user = signed_in_user(session)
    email = user.get("email") if isinstance(user, Mapping) else None
    return Caller(role=grant.role, user_id=user_id(session) or "", email=email if isinstance(email, str) else "")


def is_admin(config: GatewayConfig, session: Mapping[str, Any]) -> bool:
    """ADMIN_EMAILS or ADMIN_GROUP: may read the audit trail."""
    who = principal(signed_in_user(session))
    if who.email is not None and who.email.lower() in config.admin_emails:
        return True
    return bool(config.admin_group) and config.admin_group in who.groups


UNREACHABLE_CHECK_TRIES = 30
UNREACHABLE_CHECK_WAIT_S = 2.0


async def log_unreachable_sources(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: under firebase/oidc, log once which configured sources have no rule, so nobody can reach them."""
    config = app[keys.CONFIG]
    task = None
    if config.token_login:
        task = asyncio.create_task(_check_unreachable(app))
    yield
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _check_unreachable(app: web.Application) -> None:
    config = app[keys.CONFIG]
    for _ in range(UNREACHABLE_CHECK_TRIES):
        try:
            reply = await app[keys.QUERY].ping(1.0)
        except ServiceError:
            await asyncio.sleep(UNREACHABLE_CHECK_WAIT_S)  # the query service is not up yet
            continue
        closed = [name for name in reply.sources if name not in config.access_policy.rules]
        if closed:
            log.warning("sources_unreachable", sources=closed, reason=f"no ACCESS_POLICY rule and AUTH_MODE={config.auth_mode} denies by default")
        return
