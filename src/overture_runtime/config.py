"""Settings, read once from the environment into a frozen object.

Every service reads its configuration through :func:`load_settings` at
start-up, and nothing else reads ``os.environ``. Names are ``OVERTURE_*``,
except the conventional ``DATABASE_URL`` and ``REDIS_URL``, which are also
accepted with the prefix. A missing required value fails loudly at start-up.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["SERVICES", "BreakerConfig", "ProviderConfig", "ServiceName", "Settings", "TokenGrant", "load_settings"]

ServiceName = Literal["ingest", "rules", "orchestrator", "connectors"]
SERVICES: tuple[ServiceName, ...] = ("ingest", "rules", "orchestrator", "connectors")


class TokenGrant(BaseModel, frozen=True):
    """One bearer token and what it grants.

    Either ``token`` (the secret itself) or ``token_sha256`` (its hex digest,
    so that the secret need not sit in the environment) must be given.
    """

    token: SecretStr | None = None
    """The bearer token."""
    token_sha256: str | None = None
    """The lower-case hex sha256 of the bearer token."""
    tenant: str
    """The tenant the token acts for; ``*`` for an internal service principal
    that names the tenant per call in the ``x-overture-tenant`` header."""
    roles: tuple[str, ...] = ()
    """The roles granted; ``*`` grants every role."""
    principal: str = ""
    """Who holds the token, for audit logs (for example ``svc:orchestrator``)."""


class BreakerConfig(BaseModel, frozen=True, extra="forbid"):
    """When a provider's circuit breaker opens, and how it tries again."""

    failure_threshold: int = Field(default=5, ge=1, le=10_000)
    """Provider failures in a row (unavailable, timed out, in doubt) that open the circuit."""
    open_seconds: float = Field(default=30.0, gt=0, le=86_400)
    """How long an open circuit refuses calls before it lets a trial call through (half-open)."""
    half_open_calls: int = Field(default=1, ge=1, le=1_000)
    """Trial calls let through at once while half-open; all must succeed to close the circuit."""


class ProviderConfig(BaseModel, frozen=True, extra="forbid"):
    """One provider: a named instance of a connector kind, with its own settings and limits.

    ``kind`` names a plugin of the ``overture.connectors`` entry-point group
    (``smtp``, ``webhook``, ``sms_http``, ...); the plugin validates
    ``settings`` at start-up.
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    """The provider's name, unique: how routes, messages (``Message.connector``) and metrics name it."""
    kind: str = Field(min_length=1, max_length=63)
    """The plugin (entry-point name) that speaks to this provider."""
    settings: dict[str, object] = {}
    """The plugin's own settings (host, URL, credentials, ...), checked by the plugin's model."""
    rate_limit_per_second: float = Field(default=0.0, ge=0, le=1_000_000)
    """Sends per second across every replica (a token bucket in Redis); 0 for no limit."""
    burst: int = Field(default=0, ge=0, le=10_000_000)
    """Sends the bucket allows at once; 0 means one second's worth (at least 1)."""
    max_wait_seconds: float = Field(default=2.0, ge=0, le=60)
    """How long a send waits for the rate limit before it is answered "retry later" (nothing sent)."""
    breaker: BreakerConfig = BreakerConfig()
    """The provider's circuit breaker."""


class Settings(BaseSettings):
    """All of Overture's settings. Not every service uses every field."""

    model_config = SettingsConfigDict(
        env_prefix="OVERTURE_", frozen=True, extra="ignore", validate_by_name=True, validate_by_alias=True
    )

    environment: Literal["dev", "test", "prod"] = "prod"
    """The deployment environment; ``dev`` relaxes nothing about auth."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console", "auto"] = "json"
    """``auto`` renders for humans on a TTY and JSON otherwise."""
    rpc_log_per_second: int = Field(50, ge=0)
    """Successful calls of one method that get their canonical ``rpc`` log line
    each second; past it, the next line says how many were left out
    (``unlogged``). Failed calls are always logged. 0: every call."""
    otel_exporter: Literal["none", "console", "otlp"] = "none"
    """Where traces go; they are always created and propagated."""

    database_url: str = Field(validation_alias=AliasChoices("OVERTURE_DATABASE_URL", "DATABASE_URL"))
    """SQLAlchemy async URL: ``postgresql+asyncpg://...`` or ``sqlite+aiosqlite:///...``."""
    redis_url: str = Field(validation_alias=AliasChoices("OVERTURE_REDIS_URL", "REDIS_URL"))
    """``redis://host:port/db``."""
    redis_cluster: bool = False
    """Talk to a Redis Cluster (keys are hash-tagged per subject and partition)."""
    redis_namespace: str = "ovt"
    """Prefix of every Redis key, so that deployments can share one Redis."""
    db_pool_size: int = 10
    """PostgreSQL connections each replica keeps open; size replicas x (pool + overflow) under max_connections."""
    db_max_overflow: int = 10
    """Extra connections a replica may open under load."""
    auto_migrate: bool = True
    """Run the service's Alembic migrations at start-up (under a lock)."""

    host: str = "127.0.0.1"
    """The interface servers bind to."""
    ingest_grpc_port: int = 50051
    rules_grpc_port: int = 50052
    orchestrator_grpc_port: int = 50053
    connectors_grpc_port: int = 50054
    ingest_http_port: int = 8080
    ingest_metrics_port: int = 9091
    rules_metrics_port: int = 9092
    orchestrator_metrics_port: int = 9093
    connectors_metrics_port: int = 9094

    ingest_address: str = "127.0.0.1:50051"
    rules_address: str = "127.0.0.1:50052"
    orchestrator_address: str = "127.0.0.1:50053"
    connectors_address: str = "127.0.0.1:50054"
    """Where each service is reached by the others."""

    auth_tokens: Annotated[tuple[TokenGrant, ...], NoDecode] = ()
    """A JSON list of token grants, see :class:`TokenGrant`."""
    tenants: Annotated[tuple[str, ...], NoDecode] = ()
    """Extra known tenants (comma-separated) beyond those named by tokens."""
    service_token: SecretStr | None = None
    """The token this service presents when it calls the other services."""
    signing_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    """Comma-separated secrets (16+ characters each) that seal links in messages
    (unsubscribe, tracking) and inbox stream tokens; the first seals, all open
    (rotation). Empty: no links are added and no inbox tokens are issued."""
    public_url: str = "http://127.0.0.1:8080"
    """The public base URL of ingest's HTTP doors, used in links in messages."""

    shutdown_grace_seconds: float = 10.0
    """How long in-flight RPCs may finish after SIGTERM."""
    workers: int = Field(default=1, ge=1, le=64)
    """Processes one ``overture serve`` runs, all on the same ports (SO_REUSEPORT, as gRPC
    Python advises for CPU-bound servers); 1 serves in the supervising process itself."""
    worker_index: int | None = Field(default=None, ge=0)
    """Set by the supervisor in each worker (0 .. workers-1); worker i serves metrics on the metrics port + i."""
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """The event loop services run on: uvloop (libuv) or the standard library's."""
    max_concurrent_rpcs: int = 2000
    """RPCs a server handles at once; more are refused with RESOURCE_EXHAUSTED (bounded memory)."""
    max_message_bytes: int = 4 * 1024 * 1024
    """The largest gRPC message a server accepts."""
    rpc_timeout_seconds: float = 5.0
    """The deadline of calls to other services."""

    # connectors
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_from: str = "Overture <no-reply@overture.local>"
    smtp_timeout_seconds: float = 10.0
    smtp_pool_size: int = Field(default=16, ge=1, le=1000)
    """SMTP connections the email connector keeps open at most, per replica; sends wait for a free one."""
    smtp_pool_idle_seconds: float = Field(default=30.0, gt=0)
    """An SMTP connection idle this long is closed instead of reused."""
    smtp_pool_max_messages: int = Field(default=100, ge=1)
    """Messages sent over one SMTP connection before it is replaced (relays often cap a session)."""
    connector_concurrency: int = Field(default=16, ge=1, le=1000)
    """Provider calls each connector makes at once, per replica; a batch waits for a free slot."""
    connector_providers: Annotated[tuple[ProviderConfig, ...], NoDecode] = ()
    """JSON list of providers (see :class:`ProviderConfig`); empty: one SMTP provider ``smtp`` from ``OVERTURE_SMTP_*``."""
    connector_routes: Annotated[dict[str, tuple[str, ...]], NoDecode] = {}
    """JSON ``{"email": ["smtp-primary", "smtp-backup"]}``: per channel, the providers to try in order.
    A channel without a route uses its providers in the order they are listed."""
    connector_sweep_seconds: float = Field(default=15.0, gt=0, le=3600)
    """How often each connectors replica looks for abandoned claims and in-doubt deliveries to ask about again."""
    connector_stale_claim_seconds: float = Field(default=120.0, gt=0, le=86_400)
    """A claim still SENDING this long after it was made was left by a process that stopped mid-send: it is settled
    through the provider's status lookup, or marked IN_DOUBT, and never sent again."""
    connector_recheck_seconds: float = Field(default=60.0, gt=0, le=86_400)
    """The first wait before the provider of an in-doubt delivery is asked again; each later wait doubles, up to 6 hours."""
    connector_recheck_attempts: int = Field(default=8, ge=0, le=100)
    """How often a provider is asked again about an in-doubt delivery before it is left to an operator; 0: never."""
    dkim_private_key: SecretStr | None = None
    """A PEM private key (RSA, 1024 bits or more) to DKIM-sign every email with; none: unsigned."""
    dkim_selector: str = "overture"
    """The DKIM selector: the public key is published at ``<selector>._domainkey.<domain>``."""
    dkim_domain: str = ""
    """The DKIM signing domain (``d=``); empty: the domain of ``smtp_from``."""
    feedback_smtp_port: int = -1
    """Where the connectors service takes in bounces and complaints over SMTP; -1: not at all, 0: any free port."""

    # console
    console_port: int = 8090
    """The console's HTTP port (``overture serve console``)."""
    console_secure_cookies: bool = False
    """Mark the console's cookies ``Secure`` (sent over HTTPS only); set it whenever the console is served over HTTPS."""
    console_session_idle_seconds: float = Field(default=8 * 3600, gt=0, le=30 * 86400)
    """How long a console session lives without a request; each request renews it."""
    console_journey_templates: str = "examples"
    """The folder of journey YAML files the console's builder offers as templates (``*.yaml`` and ``journeys/*.yaml``
    holding a ``trigger``); relative paths are read from the working directory."""

    # rules
    reservation_ttl_seconds: float = 300.0
    """How long a frequency-cap reservation is held before it expires unsettled."""
    cap_history_days: int = 35
    """How long the cap ledger remembers sends; rolling cap windows may not be longer."""
    profile_cache_ttl_seconds: float = 600.0
    """How long a profile stays in the Redis read-through cache (and, at most, in a replica's own memory)."""
    profile_local_cache_size: int = 100_000
    """Profile views each replica keeps in memory for decisions; each use is
    confirmed current by Redis in the decision's one round trip."""
    decision_writes: Literal["sync", "async"] = "sync"
    """``sync``: answer a decision after its record is inserted (grouped with
    concurrent ones). ``async``: answer once queued, flush within 2 ms; a crash
    loses at most that much of the record trail, and the database leaves the latency."""
    active_version_ttl_seconds: float = 2.0
    """How long a replica trusts its cached active-version pointer; an activation
    through another replica takes effect here within this time."""
    profile_read_timeout_seconds: float = 1.0
    """How long a decision waits for the profile store before it fails closed."""

    # ingest
    ingest_rate_per_second: float = 20_000
    """Events per second each tenant may send, sustained (token bucket); 0 turns limiting off."""
    ingest_burst: int = 40_000
    """Events a tenant may send at once; at least the largest batch (1,000)."""
    ingest_daily_quota: int = 0
    """Events per tenant per UTC day; 0 for none."""
    ingest_write_connections: int = Field(default=4, ge=1, le=64)
    """PostgreSQL connections each ingest replica inserts events on, besides its pool (batches of 50+ are written side by side)."""
    ingest_tenant_limits: Annotated[dict[str, dict[str, float]], NoDecode] = {}
    """Per-tenant overrides: JSON ``{"tenant": {"rate": ..., "burst": ..., "daily_quota": ...}}``."""
    event_type_aliases: Annotated[dict[str, dict[str, str]], NoDecode] = {}
    """Per-tenant event type aliases: JSON ``{"tenant": {"email_open": "email.opened"}}``."""
    inbox_heartbeat_seconds: float = Field(default=15.0, gt=0)
    """How often an idle inbox stream (``GET /inbox/stream``) sends a comment, so proxies keep it open."""
    inbox_max_streams: int = Field(default=500, ge=0)
    """Inbox streams one ingest process serves at once (each holds a Redis subscription); more get 503."""
    max_event_age_days: int = 365
    """How old ``occurred_at`` may be."""
    event_retention_days: int = 30
    """How long published events are kept (and deduplicated against)."""
    republish_horizon_hours: float = 24
    """After Redis loses the stream, events published within this horizon are published again."""

    # orchestrator
    stream_partitions: int = 8
    """How many partitions the event stream has; events go by subject hash."""
    consumer_name: str = ""
    """This replica's consumer name in the stream's group; defaults to host:pid."""
    orchestrator_workers: int = Field(default=2, ge=1, le=64)
    """Workers per replica that claim and execute due tokens, each a batch at a
    time. Two keep one batch executing while another waits on its calls; on a
    two-core host more only contend for the same cores (bench/e2e.py at 200
    events/s: p99 139-154 ms with 2, 195-274 ms with 4, the same throughput).
    Raise it where the services and the database have cores to spare."""
    orchestrator_batch: int = Field(default=100, ge=1, le=1000)
    """Tokens a worker claims at once, and stream entries the consumer reads at once per partition."""
    consumer_reclaim_idle_seconds: float = Field(default=30.0, gt=0)
    """How long a stream entry stays pending (its consumer crashed, or handling it failed) before it is delivered again."""
    consumer_max_deliveries: int = Field(default=5, ge=1, le=100)
    """Deliveries of a stream entry before it is dead-lettered as poison."""
    backtest_concurrency: int = Field(default=2, ge=1, le=16)
    """Journey backtests one orchestrator replica runs at once; more wait their turn."""
    backtest_max_events: int = Field(default=500_000, ge=1_000, le=10_000_000)
    """Events a journey backtest may read from its window; a larger window fails, asking for a narrower one."""

    @field_validator("auth_tokens", "connector_providers", mode="before")
    @classmethod
    def _parse_json_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(json.loads(value)) if value.strip() else ()
        return value

    @field_validator("ingest_tenant_limits", "event_type_aliases", "connector_routes", mode="before")
    @classmethod
    def _parse_json_object(cls, value: object) -> object:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @field_validator("signing_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value

    @field_validator("tenants", mode="before")
    @classmethod
    def _parse_tenants(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value

    @field_validator("stream_partitions")
    @classmethod
    def _positive(cls, value: int) -> int:
        if not 1 <= value <= 1024:
            raise ValueError("must be between 1 and 1024")
        return value

    def grpc_port(self, service: ServiceName) -> int:
        """The gRPC port *service* listens on."""
        return int(getattr(self, f"{service}_grpc_port"))

    def metrics_port(self, service: ServiceName) -> int:
        """The Prometheus port of *service*."""
        return int(getattr(self, f"{service}_metrics_port"))

    def address(self, service: ServiceName) -> str:
        """Where *service* is reached."""
        return str(getattr(self, f"{service}_address"))


_S = TypeVar("_S", bound=Settings)


def load_settings(cls: type[_S] = Settings, **overrides: object) -> _S:  # type: ignore[assignment]
    """Read settings from the environment, with *overrides* taking precedence."""
    return cls(**overrides)  # type: ignore[arg-type]
