"""Unit tests of :mod:`overture_runtime.config`: settings from the environment."""

from __future__ import annotations

import json
import os

import pydantic
import pytest

from overture_runtime.config import SERVICES, Settings, TokenGrant, load_settings

REQUIRED = {"OVERTURE_DATABASE_URL": "postgresql+asyncpg://db/app", "OVERTURE_REDIS_URL": "redis://cache:6379/0"}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every variable Settings could read, so the host environment cannot leak in."""
    for name in list(os.environ):
        if name.upper().startswith("OVERTURE_") or name.upper() in {"DATABASE_URL", "REDIS_URL"}:
            monkeypatch.delenv(name)


@pytest.fixture
def required_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set the two required settings through the environment."""
    for name, value in REQUIRED.items():
        monkeypatch.setenv(name, value)


def test_reads_prefixed_environment_variables(monkeypatch: pytest.MonkeyPatch, required_env: None) -> None:
    """Settings reads OVERTURE_-prefixed variables into typed fields."""
    monkeypatch.setenv("OVERTURE_ENVIRONMENT", "test")
    monkeypatch.setenv("OVERTURE_LOG_LEVEL", "debug")
    monkeypatch.setenv("OVERTURE_RULES_GRPC_PORT", "6000")
    monkeypatch.setenv("OVERTURE_AUTO_MIGRATE", "false")
    monkeypatch.setenv("OVERTURE_SHUTDOWN_GRACE_SECONDS", "2.5")
    monkeypatch.setenv("OVERTURE_SERVICE_TOKEN", "svc-secret")
    settings = Settings()
    assert settings.database_url == REQUIRED["OVERTURE_DATABASE_URL"]
    assert settings.redis_url == REQUIRED["OVERTURE_REDIS_URL"]
    assert settings.environment == "test"
    assert settings.log_level == "debug"
    assert settings.rules_grpc_port == 6000
    assert settings.auto_migrate is False
    assert settings.shutdown_grace_seconds == 2.5
    assert settings.service_token is not None and settings.service_token.get_secret_value() == "svc-secret"


def test_defaults_apply_when_only_required_values_are_set(required_env: None) -> None:
    """Only the database and Redis URLs are required; everything else has a production default."""
    settings = Settings()
    assert settings.environment == "prod"
    assert settings.redis_namespace == "ovt"
    assert settings.auth_tokens == ()
    assert settings.tenants == ()
    assert settings.service_token is None
    assert settings.stream_partitions == 8


def test_accepts_unprefixed_database_and_redis_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    """The conventional DATABASE_URL and REDIS_URL are accepted without the prefix."""
    monkeypatch.setenv("DATABASE_URL", "sqlite+aiosqlite:///plain.db")
    monkeypatch.setenv("REDIS_URL", "redis://plain:6379/1")
    settings = Settings()
    assert settings.database_url == "sqlite+aiosqlite:///plain.db"
    assert settings.redis_url == "redis://plain:6379/1"


def test_prefixed_url_wins_over_unprefixed(monkeypatch: pytest.MonkeyPatch, required_env: None) -> None:
    """When both OVERTURE_DATABASE_URL and DATABASE_URL are set, the prefixed one is used."""
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://other/db")
    assert Settings().database_url == REQUIRED["OVERTURE_DATABASE_URL"]


def test_missing_database_url_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a database URL, construction raises a ValidationError naming the field."""
    monkeypatch.setenv("OVERTURE_REDIS_URL", "redis://cache:6379/0")
    with pytest.raises(pydantic.ValidationError) as caught:
        Settings()
    locations = {error["loc"][0] for error in caught.value.errors()}
    assert locations == {"OVERTURE_DATABASE_URL"}


def test_missing_redis_url_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a Redis URL, construction raises a ValidationError naming the field."""
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://db/app")
    with pytest.raises(pydantic.ValidationError) as caught:
        Settings()
    locations = {error["loc"][0] for error in caught.value.errors()}
    assert locations == {"OVERTURE_REDIS_URL"}


def test_parses_auth_tokens_json(monkeypatch: pytest.MonkeyPatch, required_env: None) -> None:
    """OVERTURE_AUTH_TOKENS is a JSON list of token grants, with plain or sha256 tokens."""
    grants = [
        {"token": "plain-secret", "tenant": "acme", "roles": ["rules.read"], "principal": "reader"},
        {"token_sha256": "ab" * 32, "tenant": "*", "roles": ["*"]},
    ]
    monkeypatch.setenv("OVERTURE_AUTH_TOKENS", json.dumps(grants))
    tokens = Settings().auth_tokens
    assert len(tokens) == 2
    assert all(isinstance(grant, TokenGrant) for grant in tokens)
    first, second = tokens
    assert first.token is not None and first.token.get_secret_value() == "plain-secret"
    assert (first.tenant, first.roles, first.principal) == ("acme", ("rules.read",), "reader")
    assert second.token is None and second.token_sha256 == "ab" * 32 and second.tenant == "*"


def test_token_secrets_are_not_shown_in_repr(monkeypatch: pytest.MonkeyPatch, required_env: None) -> None:
    """The plain token of a grant is a secret and does not appear in the settings' repr."""
    monkeypatch.setenv("OVERTURE_AUTH_TOKENS", json.dumps([{"token": "hunter2-token", "tenant": "acme"}]))
    assert "hunter2-token" not in repr(Settings())


def test_blank_auth_tokens_means_no_tokens(monkeypatch: pytest.MonkeyPatch, required_env: None) -> None:
    """A blank OVERTURE_AUTH_TOKENS configures no tokens rather than failing."""
    monkeypatch.setenv("OVERTURE_AUTH_TOKENS", "  ")
    assert Settings().auth_tokens == ()


def test_invalid_auth_tokens_json_fails(monkeypatch: pytest.MonkeyPatch, required_env: None) -> None:
    """A grant without its tenant is rejected at start-up."""
    monkeypatch.setenv("OVERTURE_AUTH_TOKENS", json.dumps([{"token": "t"}]))
    with pytest.raises(pydantic.ValidationError):
        Settings()


def test_parses_tenants_comma_list(monkeypatch: pytest.MonkeyPatch, required_env: None) -> None:
    """OVERTURE_TENANTS is a comma-separated list; blanks and surrounding spaces are dropped."""
    monkeypatch.setenv("OVERTURE_TENANTS", " acme, globex ,,initech ")
    assert Settings().tenants == ("acme", "globex", "initech")


@pytest.mark.parametrize("partitions", ["0", "-1", "1025"])
def test_rejects_stream_partitions_out_of_range(monkeypatch: pytest.MonkeyPatch, required_env: None, partitions: str) -> None:
    """stream_partitions must be between 1 and 1024."""
    monkeypatch.setenv("OVERTURE_STREAM_PARTITIONS", partitions)
    with pytest.raises(pydantic.ValidationError) as caught:
        Settings()
    assert [error["loc"] for error in caught.value.errors()] == [("stream_partitions",)]


@pytest.mark.parametrize("partitions", [1, 1024])
def test_accepts_stream_partitions_at_the_bounds(required_env: None, partitions: int) -> None:
    """The bounds 1 and 1024 of stream_partitions are themselves valid."""
    assert Settings(stream_partitions=partitions).stream_partitions == partitions


def test_rejects_unknown_environment(monkeypatch: pytest.MonkeyPatch, required_env: None) -> None:
    """The environment must be one of dev, test or prod."""
    monkeypatch.setenv("OVERTURE_ENVIRONMENT", "staging")
    with pytest.raises(pydantic.ValidationError):
        Settings()


def test_settings_are_frozen(required_env: None) -> None:
    """Assigning to a field after construction raises a ValidationError."""
    settings = Settings()
    with pytest.raises(pydantic.ValidationError):
        settings.redis_namespace = "changed"  # type: ignore[misc]
    assert settings.redis_namespace == "ovt"


def test_keyword_arguments_take_precedence_over_environment(monkeypatch: pytest.MonkeyPatch, required_env: None) -> None:
    """load_settings overrides win over the environment."""
    monkeypatch.setenv("OVERTURE_REDIS_NAMESPACE", "from-env")
    settings = load_settings(redis_namespace="from-override", database_url="sqlite+aiosqlite:///x.db")
    assert settings.redis_namespace == "from-override"
    assert settings.database_url == "sqlite+aiosqlite:///x.db"
    assert settings.redis_url == REQUIRED["OVERTURE_REDIS_URL"]


def test_port_and_address_helpers_follow_the_service_fields(required_env: None) -> None:
    """grpc_port, metrics_port and address read the named service's own fields."""
    settings = Settings(connectors_grpc_port=7004, connectors_metrics_port=7104, connectors_address="conn:7004")
    assert settings.grpc_port("connectors") == 7004
    assert settings.metrics_port("connectors") == 7104
    assert settings.address("connectors") == "conn:7004"
    assert settings.grpc_port("ingest") == 50051
    assert settings.metrics_port("rules") == 9092
    assert settings.address("orchestrator") == "127.0.0.1:50053"


def test_every_service_has_ports_and_an_address(required_env: None) -> None:
    """Each of the four services has distinct default gRPC and metrics ports and an address."""
    settings = Settings()
    grpc_ports = {settings.grpc_port(service) for service in SERVICES}
    metrics_ports = {settings.metrics_port(service) for service in SERVICES}
    assert len(grpc_ports) == len(metrics_ports) == len(SERVICES) == 4
    assert all(settings.address(service).endswith(f":{settings.grpc_port(service)}") for service in SERVICES)
