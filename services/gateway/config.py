"""Gateway configuration, read from the environment (and `.env`)."""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from shared.access import EMPTY, AccessPolicy, parse_policy
from shared.audit import DEFAULT_STREAM, default_stream, stream_name
from shared.bus import redact_url
from shared.config import ServiceSettings, env_float, setting, tcp_port
from shared.errors import ConfigError

AUTH_MODES = ("dev", "off", "oidc", "firebase")
TOKEN_MODES = ("oidc", "firebase")
FIREBASE_ISSUER = "https://securetoken.google.com/"
FIREBASE_JWKS_URL = "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com"
_FIREBASE_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_RATE_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _on_with_tokens(env: str, default: bool, doc: str) -> Any:
    """A switch whose default is on when sign-in is by ID token (AUTH_MODE oidc or firebase), off otherwise."""
    return setting(env, default, doc, default_from=lambda values: values["auth_mode"] in TOKEN_MODES, shown="1 in oidc/firebase")


def _lower(_name: str, raw: str) -> str:
    return raw.lower()


def _email_domains(_name: str, raw: str) -> tuple[str, ...]:
    return tuple(d.lstrip("@").lower() for d in _comma_list(raw))


def _networks(name: str, raw: str) -> tuple[Network, ...]:
    return tuple(_network(name, item) for item in _comma_list(raw))


def _origins(name: str, raw: str) -> tuple[str, ...]:
    return tuple(_origin(name, item) for item in _comma_list(raw))


def _emails(_name: str, raw: str) -> tuple[str, ...]:
    return tuple(e.lower() for e in _comma_list(raw))


def _temperature(name: str, raw: str) -> float:
    return env_float({name: raw}, name, 0.0, minimum=0)


@dataclass(frozen=True, kw_only=True)
class GatewayConfig(ServiceSettings):
    """Everything the gateway reads at start-up."""

    host: str = setting("GATEWAY_HOST", "0.0.0.0", "the address the HTTP server binds")
    port: int = setting("GATEWAY_PORT", 8080, "the HTTP port", parse=tcp_port)
    auth_mode: str = setting("AUTH_MODE", "off", "`oidc` or `firebase` verify ID tokens; `dev` logs in anyone by email; `off` disables login", parse=_lower)
    oidc_issuer: str = setting("OIDC_ISSUER", "", "the issuer (`iss`) of accepted ID tokens; required with AUTH_MODE=oidc")
    oidc_audience: str = setting("OIDC_AUDIENCE", "", "the audience (`aud`, the client id) of accepted ID tokens; required with AUTH_MODE=oidc")
    oidc_jwks_url: str = setting("OIDC_JWKS_URL", "", "where the signing keys are; default: `jwks_uri` of the issuer's discovery document", shown="from discovery")
    firebase_project_id: str = setting("FIREBASE_PROJECT_ID", "", "with AUTH_MODE=firebase, the project whose ID tokens are accepted")
    firebase_web_config: str = setting("FIREBASE_WEB_CONFIG", "", "the Firebase web app's config object (JSON) for the page's Google sign-in; served by GET /auth/config")
    auth_clock_skew_s: int = setting("AUTH_CLOCK_SKEW_S", 60, "tolerance in seconds for `exp`, `iat` and `auth_time`", minimum=0)
    auth_allowed_email_domains: tuple[str, ...] = setting("AUTH_ALLOWED_EMAIL_DOMAINS", (), "comma list; when set, only these email domains may sign in", parse=_email_domains, shown="any")
    auth_require_verified_email: bool = _on_with_tokens("AUTH_REQUIRE_VERIFIED_EMAIL", True, "refuse tokens whose `email_verified` is not true")
    auth_jwks_cache_min_s: float = setting("AUTH_JWKS_CACHE_MIN_S", 300.0, "the shortest time signing keys are cached, whatever Cache-Control says", minimum=0)
    auth_jwks_cache_max_s: float = setting("AUTH_JWKS_CACHE_MAX_S", 86400.0, "the longest time signing keys are cached, whatever Cache-Control says", minimum=0)
    auth_login_rate: tuple[int, int] = setting(
        "AUTH_LOGIN_RATE", (10, 60), "token logins allowed per client IP, e.g. `10/minute`, `100/hour`; `0` turns it off", parse=lambda name, raw: _rate(name, raw), shown="10/minute"
    )
    trusted_proxies: tuple[Network, ...] = setting("TRUSTED_PROXIES", (), "CIDR list of proxies whose X-Forwarded-For/-Host/-Proto are believed", parse=_networks)
    allowed_origins: tuple[str, ...] = setting("ALLOWED_ORIGINS", (), "comma list of other origins (`https://app.example.com`) allowed to post with the cookie", parse=_origins)
    public_origin: str = setting(
        "PUBLIC_ORIGIN", "", "the gateway's own origin as browsers see it; default: from Host (and trusted X-Forwarded-*)", parse=lambda name, raw: _origin(name, raw), shown="from the request"
    )
    cookie_name: str = setting("SESSION_COOKIE_NAME", "session", "the cookie holding the session id (Flask's default name)")
    cookie_secure: bool = setting("COOKIE_SECURE", False, "mark the cookie Secure (set it behind HTTPS)")
    use_signer: bool = setting("SESSION_USE_SIGNER", False, "sign the sid in the cookie like Flask-Session's use_signer")
    secret_key: str = setting("SECRET_KEY", "", "the Flask app's secret key, needed when SESSION_USE_SIGNER is on", secret=True)
    session_lifetime: int = setting("SESSION_LIFETIME", 2678400, "cookie Max-Age in seconds; the session service uses the same value for the TTL", minimum=1)
    session_timeout_s: float = setting("SESSION_REQUEST_TIMEOUT_S", 2.0, "how long a session call over NATS may take", minimum=0.05)
    stream_idle_s: float = setting("QUERY_STREAM_IDLE_S", 5.0, "silence from the query service after which a stream ends in an error", minimum=0.5)
    client_write_timeout_s: float = setting(
        "CLIENT_WRITE_TIMEOUT_S", 30.0, "a client that accepts no bytes of a stream for this long is given up (the stream ends, its query is cancelled)", minimum=0.1
    )
    llm_base_url: str = setting("LLM_BASE_URL", "", "an OpenAI-compatible Chat Completions endpoint; empty turns /api/chat off (503)")
    llm_api_key: str = setting("LLM_API_KEY", "", "the model's API key (never logged); servers without keys accept any value", secret=True)
    llm_model: str = setting("LLM_MODEL", "", "the model name sent with every request; required with LLM_BASE_URL")
    llm_timeout_s: float = setting("LLM_TIMEOUT_S", 60.0, "longest wait for the model to connect, or between two streamed chunks", minimum=0.1)
    llm_temperature: float | None = setting("LLM_TEMPERATURE", None, "sampling temperature; unset leaves the model's default", parse=_temperature, shown="model default")
    llm_max_retries: int = setting("LLM_MAX_RETRIES", 2, "the openai SDK's own retries of a failed request, before anything was streamed", minimum=0)
    llm_max_steps: int = setting("LLM_MAX_STEPS", 8, "model calls per chat turn at most; then the turn ends with a final text", minimum=1)
    llm_schema_max_chars: int = setting("LLM_SCHEMA_MAX_CHARS", 6000, "the schema overview goes into the system prompt when it is at most this long", minimum=0)
    llm_schema_search_max_chars: int = setting("LLM_SCHEMA_SEARCH_MAX_CHARS", 8000, "a search_schema result the model gets is at most this long (the least relevant tables are left out)", minimum=500)
    llm_examples: int = setting("LLM_EXAMPLES", 3, "approved verified examples like the question put into the model's context per turn; 0 none", minimum=0)
    examples_require_approval: bool = _on_with_tokens("EXAMPLES_REQUIRE_APPROVAL", False, "a thumbs-up proposes an example that an admin must approve before it is used")
    llm_history_max_chars: int = setting("LLM_HISTORY_MAX_CHARS", 60000, "the conversation sent to the model; the oldest turns are dropped past it", minimum=1000)
    chat_quota_per_minute: int = setting("CHAT_QUOTA_PER_MINUTE", 10, "chat turns per user per minute (0: no limit)", minimum=0)
    chat_quota_per_hour: int = setting("CHAT_QUOTA_PER_HOUR", 200, "chat turns per user per hour (0: no limit)", minimum=0)
    chat_quota_per_day: int = setting("CHAT_QUOTA_PER_DAY", 1000, "chat turns per user per day (0: no limit)", minimum=0)
    access_policy: AccessPolicy = setting(
        "ACCESS_POLICY", EMPTY, "who may use which source, as which database role (JSON, or a path to a JSON or YAML file; docs/access.md)", parse=lambda name, raw: parse_policy(raw, name), shown=""
    )
    groups_claim: str = setting("AUTH_GROUPS_CLAIM", "", "the ID-token claim holding the user's groups (e.g. `groups`); kept in the session")
    admin_emails: tuple[str, ...] = setting("ADMIN_EMAILS", (), "comma list of emails that may read the audit trail (GET /api/audit)", parse=_emails)
    admin_group: str = setting("ADMIN_GROUP", "", "members of this group may read the audit trail too")
    audit_stream: str = setting(
        "AUDIT_STREAM",
        DEFAULT_STREAM,
        "the JetStream stream of the audit trail (subjects `<prefix>.audit.>`); default: `AUDIT`, or `AUDIT_<prefix>` under another NATS_SUBJECT_PREFIX",
        parse=stream_name,
        default_from=lambda values: default_stream(values["subject_prefix"]),
    )
    audit_replicas: int = setting(
        "AUDIT_REPLICAS", 1, "the audit stream's replicas (within a JetStream cluster)", minimum=1, default_from=lambda values: values["nats_js_replicas"], shown="NATS_JS_REPLICAS"
    )
    audit_max_age_s: float = setting("AUDIT_MAX_AGE", 365 * 86400.0, "seconds an audit event is kept (0: forever)", minimum=0)
    audit_max_bytes: int = setting("AUDIT_MAX_BYTES", -1, "the audit stream's size limit in bytes; the oldest events go first (-1: none)", minimum=-1)
    audit_required: bool = setting("AUDIT_REQUIRED", False, "refuse queries (503) while the audit stream cannot take events, instead of buffering them")
    audit_buffer: int = setting("AUDIT_BUFFER", 10000, "audit events kept in memory while the stream cannot take them; more are dropped and counted", minimum=1)

    def __post_init__(self) -> None:
        if self.auth_mode not in AUTH_MODES:
            raise ConfigError(f"AUTH_MODE must be one of {', '.join(AUTH_MODES)}, got {self.auth_mode!r}")
        if self.use_signer and not self.secret_key:
            raise ConfigError("SECRET_KEY must be set when SESSION_USE_SIGNER is on")
        if self.auth_mode == "oidc":
            if not self.oidc_issuer:
                raise ConfigError("OIDC_ISSUER must be set when AUTH_MODE is oidc")
            if not self.oidc_audience:
                raise ConfigError("OIDC_AUDIENCE must be set when AUTH_MODE is oidc")
            _check_url("OIDC_ISSUER", self.oidc_issuer)
        if self.auth_mode == "firebase" and not _FIREBASE_PROJECT.match(self.firebase_project_id):
            raise ConfigError(f"FIREBASE_PROJECT_ID must be a Firebase project id (6-30 lowercase letters, digits, hyphens) when AUTH_MODE is firebase, got {self.firebase_project_id!r}")
        if self.oidc_jwks_url:
            _check_url("OIDC_JWKS_URL", self.oidc_jwks_url)
        if self.auth_jwks_cache_max_s < self.auth_jwks_cache_min_s:
            raise ConfigError("AUTH_JWKS_CACHE_MAX_S must not be less than AUTH_JWKS_CACHE_MIN_S")
        if self.firebase_web_config:
            _check_firebase_web_config(self.firebase_web_config, self.firebase_project_id)
        if self.llm_base_url and not self.llm_base_url.startswith(("http://", "https://")):
            raise ConfigError(f"LLM_BASE_URL must be an http:// or https:// URL, got {redact_url(self.llm_base_url)!r}")
        if self.llm_base_url and not self.llm_model:
            raise ConfigError("LLM_MODEL must be set when LLM_BASE_URL is set")

    @property
    def token_login(self) -> bool:
        """Whether sign-in is by ID token (oidc or firebase)."""
        return self.auth_mode in TOKEN_MODES

    @property
    def firebase_web(self) -> dict[str, str] | None:
        """FIREBASE_WEB_CONFIG as an object, or None when the page has no Google sign-in."""
        return json.loads(self.firebase_web_config) if self.auth_mode == "firebase" and self.firebase_web_config else None

    @property
    def issuer(self) -> str:
        return FIREBASE_ISSUER + self.firebase_project_id if self.auth_mode == "firebase" else self.oidc_issuer

    @property
    def audience(self) -> str:
        return self.firebase_project_id if self.auth_mode == "firebase" else self.oidc_audience

    @property
    def jwks_url(self) -> str | None:
        """The JWKS URL, or None when it comes from the issuer's discovery document."""
        if self.oidc_jwks_url:
            return self.oidc_jwks_url
        return FIREBASE_JWKS_URL if self.auth_mode == "firebase" else None

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


def _comma_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def _check_url(name: str, url: str) -> None:
    """HTTPS, or plain HTTP to this machine only (a local issuer in development)."""
    parts = urlsplit(url)
    if not parts.hostname or parts.scheme not in ("https", "http") or (parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS):
        raise ConfigError(f"{name} must be an https:// URL (http:// only for localhost), got {url!r}")


def _origin(name: str, raw: str) -> str:
    """`scheme://host[:port]`, lower-cased, without a default port or a trailing slash: what browsers send."""
    parts = urlsplit(raw.strip().rstrip("/"))
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query or port == -1:
        raise ConfigError(f"{name} must hold origins like https://app.example.com, got {raw!r}")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


_FIREBASE_WEB_KEYS = ("apiKey", "authDomain", "projectId", "appId", "messagingSenderId", "storageBucket", "measurementId")
_FIREBASE_AUTH_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


def _check_firebase_web_config(raw: str, project_id: str) -> None:
    """A JSON object of strings with apiKey, authDomain (a host name) and projectId (the accepted project)."""
    name = "FIREBASE_WEB_CONFIG"
    try:
        value = json.loads(raw)
    except ValueError:
        raise ConfigError(f'{name} must be the Firebase web app\'s config as JSON, e.g. {{"apiKey": "...", "authDomain": "p.firebaseapp.com", "projectId": "p"}}') from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f"{name} must be a JSON object of strings")
    unknown = sorted(set(value) - set(_FIREBASE_WEB_KEYS))
    if unknown:
        raise ConfigError(f"{name} has unknown keys {unknown}; allowed: {', '.join(_FIREBASE_WEB_KEYS)}")
    missing = [key for key in ("apiKey", "authDomain", "projectId") if not value.get(key)]
    if missing:
        raise ConfigError(f"{name} needs {', '.join(missing)}")
    if not _FIREBASE_AUTH_DOMAIN.match(value["authDomain"]):
        raise ConfigError(f"{name}: authDomain must be a host name such as my-project.firebaseapp.com, got {value['authDomain']!r}")
    if project_id and value["projectId"] != project_id:
        raise ConfigError(f"{name}: projectId {value['projectId']!r} is not FIREBASE_PROJECT_ID {project_id!r}")


def _network(name: str, raw: str) -> Network:
    try:
        return ipaddress.ip_network(raw, strict=False)
    except ValueError:
        raise ConfigError(f"{name} must be a comma list of IP addresses or CIDR networks, got {raw!r}") from None


def _rate(name: str, raw: str) -> tuple[int, int]:
    """`N/unit` (second, minute, hour, day, or a number of seconds such as `N/30s`) -> (N, seconds); `0` is off."""
    if raw.strip() in ("0", "off"):
        return (0, 60)
    count, _, unit = raw.partition("/")
    unit = unit.strip().lower()
    match = re.fullmatch(r"(\d+)\s*(s|sec|second|m|min|minute|h|hour|d|day)s?", unit) or re.fullmatch(r"()(s|sec|second|m|min|minute|h|hour|d|day)s?", unit)
    if not count.strip().isdigit() or match is None:
        raise ConfigError(f"{name} must look like 10/minute (second, minute, hour, day) or 0 for off, got {raw!r}")
    seconds = _RATE_UNITS[match.group(2)] * int(match.group(1) or 1)
    if seconds <= 0:
        raise ConfigError(f"{name} needs a window longer than 0 seconds, got {raw!r}")
    return (int(count), seconds)
