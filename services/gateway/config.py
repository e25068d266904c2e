"""Gateway configuration, read from the environment (and `.env`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.config import (
    common_nats,
    env_bool,
    env_float,
    env_int,
    env_port,
    env_str,
    environ,
)
from shared.bus import redact_url
from shared.errors import ConfigError

AUTH_MODES = ("dev", "off")


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway reads at start-up."""

    nats_url: str
    """NATS_URL: where the session and query services are reached."""
    subject_prefix: str
    """NATS_SUBJECT_PREFIX: the first token of every subject (default `dbgenie`)."""
    host: str = "0.0.0.0"
    """GATEWAY_HOST: the address the HTTP server binds."""
    port: int = 8080
    """GATEWAY_PORT: the HTTP port."""
    auth_mode: str = "off"
    """AUTH_MODE: `dev` enables POST /auth/login with a JSON body; `off` disables login."""
    cookie_name: str = "session"
    """SESSION_COOKIE_NAME: the cookie holding the session id (Flask's default name)."""
    cookie_secure: bool = False
    """COOKIE_SECURE: mark the cookie Secure (set it behind HTTPS)."""
    use_signer: bool = False
    """SESSION_USE_SIGNER: sign the sid in the cookie like Flask-Session's use_signer."""
    secret_key: str = ""
    """SECRET_KEY: the Flask app's secret key, needed when SESSION_USE_SIGNER is on."""
    session_lifetime: int = 2678400
    """SESSION_LIFETIME: cookie Max-Age in seconds; the session service uses the same value for the TTL."""
    session_timeout_s: float = 2.0
    """SESSION_REQUEST_TIMEOUT_S: how long a session call over NATS may take."""
    stream_idle_s: float = 5.0
    """QUERY_STREAM_IDLE_S: silence from the query service after which a stream ends in an error."""
    shutdown_grace_s: float = 20.0
    """SHUTDOWN_GRACE_S: how long in-flight requests and streams may finish after SIGTERM."""
    log_level: str = "INFO"
    """LOG_LEVEL: DEBUG, INFO, WARNING or ERROR."""
    llm_base_url: str = ""
    """LLM_BASE_URL: an OpenAI-compatible Chat Completions endpoint; empty turns /api/chat off (503)."""
    llm_api_key: str = field(default="", repr=False)
    """LLM_API_KEY: the model's API key (never logged); servers without keys accept any value."""
    llm_model: str = ""
    """LLM_MODEL: the model name sent with every request; required with LLM_BASE_URL."""
    llm_timeout_s: float = 60.0
    """LLM_TIMEOUT_S: longest wait for the model to connect, or between two streamed chunks."""
    llm_temperature: float | None = None
    """LLM_TEMPERATURE: sampling temperature; unset leaves the model's default."""
    llm_max_retries: int = 2
    """LLM_MAX_RETRIES: the openai SDK's own retries of a failed request, before anything was streamed."""
    llm_max_steps: int = 8
    """LLM_MAX_STEPS: model calls per chat turn at most; then the turn ends with a final text."""
    llm_schema_max_chars: int = 6000
    """LLM_SCHEMA_MAX_CHARS: the schema overview goes into the system prompt when it is at most this long."""
    llm_history_max_chars: int = 60000
    """LLM_HISTORY_MAX_CHARS: the conversation sent to the model; the oldest turns are dropped past it."""
    chat_quota_per_minute: int = 10
    """CHAT_QUOTA_PER_MINUTE: chat turns per user per minute (0: no limit)."""
    chat_quota_per_hour: int = 200
    """CHAT_QUOTA_PER_HOUR: chat turns per user per hour (0: no limit)."""
    chat_quota_per_day: int = 1000
    """CHAT_QUOTA_PER_DAY: chat turns per user per day (0: no limit)."""

    def __post_init__(self) -> None:
        if self.auth_mode not in AUTH_MODES:
            raise ConfigError(f"AUTH_MODE must be one of {', '.join(AUTH_MODES)}, got {self.auth_mode!r}")
        if self.use_signer and not self.secret_key:
            raise ConfigError("SECRET_KEY must be set when SESSION_USE_SIGNER is on")
        if self.llm_base_url and not self.llm_base_url.startswith(("http://", "https://")):
            raise ConfigError(f"LLM_BASE_URL must be an http:// or https:// URL, got {redact_url(self.llm_base_url)!r}")
        if self.llm_base_url and not self.llm_model:
            raise ConfigError("LLM_MODEL must be set when LLM_BASE_URL is set")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewayConfig:
        env = environ() if env is None else env
        nats_url, prefix = common_nats(env)
        return cls(
            nats_url=nats_url,
            subject_prefix=prefix,
            host=env_str(env, "GATEWAY_HOST", "0.0.0.0"),
            port=env_port(env, "GATEWAY_PORT", 8080),
            auth_mode=env_str(env, "AUTH_MODE", "off").lower(),
            cookie_name=env_str(env, "SESSION_COOKIE_NAME", "session"),
            cookie_secure=env_bool(env, "COOKIE_SECURE", False),
            use_signer=env_bool(env, "SESSION_USE_SIGNER", False),
            secret_key=env_str(env, "SECRET_KEY", ""),
            session_lifetime=env_int(env, "SESSION_LIFETIME", 2678400, minimum=1),
            session_timeout_s=env_float(env, "SESSION_REQUEST_TIMEOUT_S", 2.0, minimum=0.05),
            stream_idle_s=env_float(env, "QUERY_STREAM_IDLE_S", 5.0, minimum=0.5),
            shutdown_grace_s=env_float(env, "SHUTDOWN_GRACE_S", 20.0, minimum=0),
            log_level=env_str(env, "LOG_LEVEL", "INFO"),
            llm_base_url=env_str(env, "LLM_BASE_URL", ""),
            llm_api_key=env_str(env, "LLM_API_KEY", ""),
            llm_model=env_str(env, "LLM_MODEL", ""),
            llm_timeout_s=env_float(env, "LLM_TIMEOUT_S", 60.0, minimum=0.1),
            llm_temperature=env_float(env, "LLM_TEMPERATURE", -1.0, minimum=0) if env.get("LLM_TEMPERATURE", "").strip() else None,
            llm_max_retries=env_int(env, "LLM_MAX_RETRIES", 2, minimum=0),
            llm_max_steps=env_int(env, "LLM_MAX_STEPS", 8, minimum=1),
            llm_schema_max_chars=env_int(env, "LLM_SCHEMA_MAX_CHARS", 6000, minimum=0),
            llm_history_max_chars=env_int(env, "LLM_HISTORY_MAX_CHARS", 60000, minimum=1000),
            chat_quota_per_minute=env_int(env, "CHAT_QUOTA_PER_MINUTE", 10, minimum=0),
            chat_quota_per_hour=env_int(env, "CHAT_QUOTA_PER_HOUR", 200, minimum=0),
            chat_quota_per_day=env_int(env, "CHAT_QUOTA_PER_DAY", 1000, minimum=0),
        )
