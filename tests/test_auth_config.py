"""GatewayConfig.from_env for sign-in: the oidc and firebase modes, and errors that name the variable."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import pytest

from services.gateway.config import FIREBASE_JWKS_URL, GatewayConfig
from shared.errors import ConfigError
from tests.conftest import SystemFactory
from tests.harness import ROOT


def test_firebase_is_a_shorthand_for_its_issuer_audience_and_keys() -> None:
    config = GatewayConfig.from_env({"AUTH_MODE": "firebase", "FIREBASE_PROJECT_ID": "dbgenie-prod"})
    assert config.issuer == "https://securetoken.google.com/dbgenie-prod"
    assert config.audience == "dbgenie-prod"
    assert config.jwks_url == FIREBASE_JWKS_URL
    assert config.auth_require_verified_email is True
    assert config.auth_login_rate == (10, 60)
    assert config.auth_clock_skew_s == 60


def test_oidc_reads_keys_from_discovery_unless_a_jwks_url_is_given() -> None:
    base = {"AUTH_MODE": "oidc", "OIDC_ISSUER": "https://accounts.example.com/", "OIDC_AUDIENCE": "client-1"}
    config = GatewayConfig.from_env(base)
    assert config.jwks_url is None
    assert config.discovery_url == "https://accounts.example.com/.well-known/openid-configuration"
    assert GatewayConfig.from_env({**base, "OIDC_JWKS_URL": "https://keys.example.com/jwks"}).jwks_url == "https://keys.example.com/jwks"


def test_lists_origins_proxies_and_rates_are_parsed() -> None:
    config = GatewayConfig.from_env(
        {
            "AUTH_ALLOWED_EMAIL_DOMAINS": "Corp.Example, @lab.example",
            "ALLOWED_ORIGINS": "https://App.Example.com:443/, http://localhost:3000",
            "PUBLIC_ORIGIN": "https://dbgenie.example.com",
            "TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.1, ::1",
            "AUTH_LOGIN_RATE": "100/hour",
        }
    )
    assert config.auth_allowed_email_domains == ("corp.example", "lab.example")
    assert config.allowed_origins == ("https://app.example.com", "http://localhost:3000")
    assert config.public_origin == "https://dbgenie.example.com"
    assert config.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.1/32"), ipaddress.ip_network("::1/128"))
    assert config.auth_login_rate == (100, 3600)
    assert GatewayConfig.from_env({"AUTH_LOGIN_RATE": "3/30s"}).auth_login_rate == (3, 30)
    assert GatewayConfig.from_env({"AUTH_LOGIN_RATE": "0"}).auth_login_rate[0] == 0
    assert GatewayConfig.from_env({}).auth_require_verified_email is False  # only meaningful with token sign-in


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"AUTH_MODE": "saml"}, "AUTH_MODE"),
        ({"AUTH_MODE": "oidc", "OIDC_AUDIENCE": "a"}, "OIDC_ISSUER"),
        ({"AUTH_MODE": "oidc", "OIDC_ISSUER": "https://i.example.com"}, "OIDC_AUDIENCE"),
        ({"AUTH_MODE": "oidc", "OIDC_ISSUER": "http://i.example.com", "OIDC_AUDIENCE": "a"}, "OIDC_ISSUER"),
        ({"AUTH_MODE": "firebase"}, "FIREBASE_PROJECT_ID"),
        ({"AUTH_MODE": "firebase", "FIREBASE_PROJECT_ID": "Bad Project"}, "FIREBASE_PROJECT_ID"),
        ({"OIDC_JWKS_URL": "ftp://keys"}, "OIDC_JWKS_URL"),
        ({"AUTH_LOGIN_RATE": "ten a minute"}, "AUTH_LOGIN_RATE"),
        ({"TRUSTED_PROXIES": "10.0.0.0/33"}, "TRUSTED_PROXIES"),
        ({"ALLOWED_ORIGINS": "app.example.com"}, "ALLOWED_ORIGINS"),
        ({"PUBLIC_ORIGIN": "https://x.example.com/path"}, "PUBLIC_ORIGIN"),
        ({"AUTH_CLOCK_SKEW_S": "-1"}, "AUTH_CLOCK_SKEW_S"),
        ({"AUTH_REQUIRE_VERIFIED_EMAIL": "maybe"}, "AUTH_REQUIRE_VERIFIED_EMAIL"),
        ({"AUTH_JWKS_CACHE_MIN_S": "600", "AUTH_JWKS_CACHE_MAX_S": "60"}, "AUTH_JWKS_CACHE_MAX_S"),
    ],
)
def test_a_bad_setting_fails_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        GatewayConfig.from_env(env)


async def test_dev_mode_warns_at_start_and_a_bad_oidc_config_stops_the_gateway(make_system: SystemFactory) -> None:
    system = make_system(start=("session", "gateway"))
    warning = system.services["gateway"].events("dev_login_enabled")
    assert len(warning) == 1 and warning[0]["level"] == "warning"

    broken = make_system(start=(), AUTH_MODE="oidc", OIDC_AUDIENCE="client-1")
    result = subprocess.run([sys.executable, "-m", "services.gateway"], env=broken.service_env("gateway"), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "OIDC_ISSUER must be set" in result.stderr


def test_the_kubernetes_base_signs_in_with_firebase_and_its_settings_load() -> None:
    import yaml

    docs = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "base" / "config.yaml").read_text()))
    data = {name: doc["data"] for doc in docs if (name := doc["metadata"]["name"]) in ("dbgenie-common", "dbgenie-gateway")}
    config = GatewayConfig.from_env({**data["dbgenie-common"], **data["dbgenie-gateway"]})
    assert config.auth_mode == "firebase"
    assert config.issuer == f"https://securetoken.google.com/{config.firebase_project_id}"
    assert config.public_origin == "https://dbgenie.example.com"
