"""Settings: one typed tree, read from a TOML file and ``CONNECTOR_<SECTION>__<KEY>`` variables.

Precedence, highest first: environment variables, the TOML file (``--config`` or
``CONNECTOR_CONFIG``), the defaults below (which ``config/default.toml`` documents). Unknown
keys and bad values stop start-up with a :class:`ConfigError` that names the key, because a
typo in a config file should never silently fall back to a default.
"""

from __future__ import annotations

import ipaddress
import itertools
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from connector.push.auth import WebhookAuth
from connector.push.url_policy import check_allowed_hosts

SCOPES = (
    "messages:read",
    "messages:write",
    "files:read",
    "files:write",
    "webhooks:admin",
    "*",
)


SQLITE_FILENAME = "connector.sqlite3"
MAX_DELIVERY_TIMEOUT = 45.0
"""``delivery.timeout`` at most: well within a delivery's 60 s claim."""


class ConfigError(Exception):
    """The configuration cannot be used; the message names each offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    public_url: Annotated[
        str, Field(max_length=2048, pattern=r"^(https?://[^\s/]+(/[^\s]*)?)?$")
    ] = ""
    """Where business systems reach this API (behind a proxy, say), for the links the
    connector hands out (attachment downloads pushed to engines). Empty: http://host:port."""

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"


class MetricsSettings(_Section):
    require_key: bool | Literal["auto"] = "auto"
    """Whether ``GET /metrics`` needs an API key (any valid key; sent as ``X-API-KEY`` or
    ``Authorization: Bearer``). ``"auto"``: yes unless ``server.host`` is a loopback address."""

    def key_required(self, host: str) -> bool:
        if self.require_key == "auto":
            return not is_loopback(host)
        return self.require_key


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IP address) can only be reached from this machine.

    ``""`` and ``0.0.0.0``/``::`` mean every interface, and any other name may resolve beyond
    loopback: none of them is.
    """
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LogSettings(_Section):
    """``[log]``: how ``connector serve`` and ``connector backbone`` write their log (stderr)."""

    format: Literal["text", "json"] = "text"
    """``text``: a line for people at a terminal; ``json``: one JSON object a line, with the
    request, message and delivery ids as fields (``connector.logs``)."""
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class DatabaseSettings(_Section):
    url: str = ""
    """Empty: SQLite in ``data_dir``; or ``postgresql+asyncpg://...``."""


class PlatformSettings(_Section):
    url: str = "embedded"
    request_timeout: Annotated[float, Field(gt=0)] = 10.0

    @field_validator("url")
    @classmethod
    def _url_is_embedded_or_http(cls, value: str) -> str:
        if value != "embedded" and not value.startswith(("http://", "https://")):
            raise ValueError('must be "embedded" or an http(s):// URL')
        return value.rstrip("/")


class ApiKeyConfig(_Section):
    name: str
    key: Annotated[str, Field(min_length=16)]
    scopes: list[str] = ["*"]

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, value: list[str]) -> list[str]:
        unknown = [scope for scope in value if scope not in SCOPES]
        if unknown:
            raise ValueError(f"unknown scope(s) {unknown}; known: {list(SCOPES)}")
        return value


class ApiSettings(_Section):
    keys: list[ApiKeyConfig] = []


class SyncSettings(_Section):
    interval: Annotated[float, Field(gt=0)] = 5.0
    long_poll: bool = True
    long_poll_wait: Annotated[float, Field(gt=0, le=60)] = 25.0
    batch_size: Annotated[int, Field(ge=1, le=1000)] = 500
    max_age: Annotated[int, Field(gt=0)] = 30 * 24 * 3600
    """Envelopes created longer ago than this are refused on arrival unless already known (a
    replay of something we may have pruned). With ``messages.retention`` set, the shorter of
    the two applies."""


class FilesSettings(_Section):
    max_size: Annotated[int, Field(ge=0)] = 1 << 30
    chunk_size: Annotated[int, Field(ge=4096, le=16 << 20)] = 1 << 20
    retention: Annotated[int, Field(ge=0)] = 0
    """Seconds a file is kept after upload or receipt; 0 keeps files until they expire."""


class MessagesSettings(_Section):
    default_time_to_live: Annotated[int, Field(gt=0)] = 7 * 24 * 3600
    retention: Annotated[int, Field(ge=0)] = 0
    """Seconds a finished message is kept after it was created; 0 keeps messages forever."""


class HousekeepingSettings(_Section):
    interval: Annotated[float, Field(gt=0)] = 60.0


class CorrelationRetrySettings(_Section):
    """When a push target answers "not correlated yet": ask again after ``first`` seconds, each
    wait ``factor`` times the one before, at most ``max``, until the message's ``expiresAt``."""

    first: Annotated[float, Field(gt=0)] = 2.0
    factor: Annotated[float, Field(ge=1)] = 1.5
    max: Annotated[float, Field(gt=0)] = 30.0

    @model_validator(mode="after")
    def _max_not_below_first(self) -> CorrelationRetrySettings:
        if self.max < self.first:
            raise ValueError(f"max ({self.max:g}) must be at least first ({self.first:g})")
        return self


class BreakerSettings(_Section):
    """``delivery.breaker``: when an endpoint counts as failing, and how long it rests."""

    failures: Annotated[int, Field(ge=1)] = 5
    """Failed attempts in a row that open the breaker (``webhook.failing``)."""
    first: Annotated[float, Field(gt=0)] = 5.0
    """Seconds of the first pause; each failed probe doubles it."""
    max: Annotated[float, Field(gt=0)] = 30.0
    """The longest pause: an endpoint that comes back is found within this (one probe
    request per pause is no load on anyone)."""

    @model_validator(mode="after")
    def _max_not_below_first(self) -> BreakerSettings:
        if self.max < self.first:
            raise ValueError(f"max ({self.max:g}) must be at least first ({self.first:g})")
        return self


class DeliverySettings(_Section):
    """Push delivery (webhooks and brokers), DESIGN.md sections 7 and 8."""

    retry_schedule: list[Annotated[float, Field(gt=0)]] = [
        5,
        300,
        1800,
        7200,
        18000,
        36000,
        50400,
        72000,
        86400,
    ]
    """Seconds between a failed delivery and the next try, one per retry, each ±20 %; after
    the last the delivery is ``dead``."""
    correlation_retry: CorrelationRetrySettings = CorrelationRetrySettings()
    timeout: Annotated[float, Field(gt=0, le=MAX_DELIVERY_TIMEOUT)] = 15.0
    """Seconds one delivery request may take; at most 45: a delivery is claimed for 60 s
    (``storage.repositories.deliveries.CLAIM_HOLD``), and one whose request could outlast its
    claim is never sent (another replica could take it meanwhile)."""
    concurrency: Annotated[int, Field(ge=1, le=1000)] = 64
    """Push requests in flight, in all."""
    per_endpoint: Annotated[int, Field(ge=1, le=1000)] = 8
    """Push requests in flight to one subscription."""
    breaker: BreakerSettings = BreakerSettings()
    allowed_hosts: list[Annotated[str, Field(min_length=1, max_length=253)]] = []
    """When not empty, the only hosts push requests may go to: names (``*.example.com``
    matches subdomains), IP addresses or networks (``10.0.0.0/8``). Link-local and cloud
    metadata addresses are refused whatever this says."""

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        return check_allowed_hosts(value)

    @field_validator("retry_schedule")
    @classmethod
    def _ascending(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("needs at least one delay")
        for before, after in itertools.pairwise(value):
            if after < before:
                raise ValueError(f"must not go down: {after:g} follows {before:g}")
        return value


class WebhookConfig(_Section):
    url: str
    events: list[str] = ["message.received"]
    format: Literal["standard", "camunda7", "camunda8", "spiff"] = "standard"
    secret: str | None = None
    headers: dict[str, str] = {}
    filter: dict[str, str] = {}
    auth: WebhookAuth | None = None
    correlate_by: Annotated[str, Field(min_length=1, max_length=255)] = "businessKey"
    """camunda7: ``businessKey``, or the correlation key (process variable) to match."""
    tenant_id: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    """camunda7, camunda8: the tenant."""
    process_group: (
        Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^:]+$")] | None
    ) = None
    """spiff: the process group qualifying message names, such as ``orders/payments``."""
    enabled: bool = True
    ordered: bool = False
    receipts: bool = False


class PublisherConfig(_Section):
    """``[[publishers]]``: a message broker that gets the ``standard`` body of each event,
    confirmed by the broker (DESIGN.md section 7)."""

    kind: Literal["amqp", "mqtt", "redis", "nats"]
    url: Annotated[str, Field(min_length=1, max_length=2048)]
    """amqp://user:pass@host:5672/vhost, mqtt://user:pass@host:1883 (mqtts:// for TLS),
    redis://[:pass@]host:6379/0 (rediss:// for TLS), nats://user:pass@host:4222 (tls://)."""
    topic: Annotated[str, Field(min_length=1, max_length=255)] = "connector.events"
    """amqp: the topic exchange; mqtt: the topic prefix; redis: the stream; nats: the subject
    prefix (and the stream for ``{topic}.>``)."""
    events: list[str] = ["message.received"]
    filter: dict[str, str] = {}
    """``name``, ``correlationKey``, ``sender``: exact values, as for webhooks."""
    maxlen: Annotated[int, Field(ge=1)] | None = None
    """redis: ``XADD ... MAXLEN ~ maxlen``; absent: the stream is not trimmed."""
    tls_ca_file: Path | None = None
    """A CA bundle to verify the broker's certificate with (TLS URLs); absent: the system's."""
    tls_insecure: bool = False
    """Do not verify the broker's certificate (tests only)."""


class Settings(BaseSettings):
    """The whole configuration. Field names are the pinned config keys (DESIGN.md section 8)."""

    model_config = SettingsConfigDict(
        env_prefix="CONNECTOR_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    data_dir: Path = Path("./data")
    server: ServerSettings = ServerSettings()
    metrics: MetricsSettings = MetricsSettings()
    log: LogSettings = LogSettings()
    database: DatabaseSettings = DatabaseSettings()
    platform: PlatformSettings = PlatformSettings()
    api: ApiSettings = ApiSettings()
    sync: SyncSettings = SyncSettings()
    files: FilesSettings = FilesSettings()
    messages: MessagesSettings = MessagesSettings()
    housekeeping: HousekeepingSettings = HousekeepingSettings()
    delivery: DeliverySettings = DeliverySettings()
    webhooks: list[WebhookConfig] = []
    publishers: list[PublisherConfig] = []

    @field_validator("webhooks")
    @classmethod
    def _one_entry_per_url_and_format(cls, value: list[WebhookConfig]) -> list[WebhookConfig]:
        seen: dict[tuple[str, str], int] = {}
        for index, entry in enumerate(value):
            first = seen.setdefault((entry.url, entry.format), index)
            if first != index:
                raise ValueError(
                    f"entries {first} and {index} have the same url and format: that is one "
                    "subscription (DESIGN.md section 7), so only one entry may say what it is"
                )
        return value

    @property
    def metrics_key_required(self) -> bool:
        """``metrics.require_key`` resolved for ``server.host``."""
        return self.metrics.key_required(self.server.host)

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL to use: the configured one, or SQLite inside ``data_dir``."""
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{(self.data_dir / SQLITE_FILENAME).resolve()}"


def load_settings(config_path: Path | None = None, **overrides: object) -> Settings:
    """Read settings from ``config_path`` (if any), the environment, then defaults.

    ``overrides`` take precedence over everything (tests and the demo use them).
    """
    if config_path is not None:
        _check_toml(config_path)

    class _FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_path))
            return tuple(sources)

    try:
        return _FileSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_describe(exc, config_path)) from None


def _check_toml(path: Path) -> None:
    try:
        with path.open("rb") as fh:
            tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = f" in {path}" if path else ""
    lines = [f"invalid configuration{where}:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(root)"
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)
