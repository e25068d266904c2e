"""Gateway configuration, read from the environment (and `.env`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shared.config import (
    common_nats,
    env_bool,
    env_float,
    env_int,
    env_port,
    env_str,
    environ,
)
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
    client_write_timeout_s: float = 30.0
    """CLIENT_WRITE_TIMEOUT_S: a stream write the client does not take within this long ends the stream and cancels its query."""
    log_level: str = "INFO"
    """LOG_LEVEL: DEBUG, INFO, WARNING or ERROR."""

    def __post_init__(self) -> None:
        if self.auth_mode not in AUTH_MODES:
            raise ConfigError(f"AUTH_MODE must be one of {', '.join(AUTH_MODES)}, got {self.auth_mode!r}")
        if self.use_signer and not self.secret_key:
            raise ConfigError("SECRET_KEY must be set when SESSION_USE_SIGNER is on")

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
            client_write_timeout_s=env_float(env, "CLIENT_WRITE_TIMEOUT_S", 30.0, minimum=0.1),
            log_level=env_str(env, "LOG_LEVEL", "INFO"),
        )
