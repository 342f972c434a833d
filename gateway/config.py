"""Settings: a TOML file, every key overridable by ``FLIPTURN_GATEWAY_<SECTION>__<KEY>``.

Loaded once into a frozen object and passed down; nothing reads the environment afterwards.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from gateway.errors import ConfigError

__all__ = [
    "ENV_CONFIG",
    "SYSTEM_CONFIG",
    "ApiSettings",
    "ChargersSettings",
    "FlipturnSettings",
    "LocalListSettings",
    "LogSettings",
    "OfflineSettings",
    "PortMapping",
    "Settings",
    "SiteSettings",
    "StoreSettings",
    "UpstreamSettings",
    "load_settings",
    "redact_url",
    "redacted",
    "resolve_config_path",
]

ENV_PREFIX = "FLIPTURN_GATEWAY_"
ENV_CONFIG = "FLIPTURN_GATEWAY_CONFIG"
SYSTEM_CONFIG = Path("/etc/flipturn-gateway/config.toml")

Port = int  # validated per field: 0 (ephemeral, for tests) to 65535


def _check_port(value: int) -> int:
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode turns `port = true` into 1; a boolean is never a valid number here.
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and field.annotation in (int, float):
            raise ValueError("must be a number, not a boolean")
        return value


class ChargersSettings(_Section):
    host: str = "0.0.0.0"
    port: Port = 9000
    path_prefix: str = "/ocpp"
    auth: Literal["none", "basic"] = "none"
    allow_unknown: bool = True
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""  # CA bundle that signs the chargers' client certificates (profile 3)
    client_certs: Literal["none", "optional", "required"] = "none"
    max_message_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    # How long a CALL sent to a charger (by the cloud or the gateway) may wait for its answer,
    # counted from when it was sent to the charger (after waiting its turn in the queue).
    call_timeout_s: float = Field(default=30.0, gt=0, le=600)
    # CALLs waiting for one charger's slot (OCPP-J: one outstanding CALL); beyond it the cloud gets
    # CALLERROR GenericError and the local API 503.
    max_queued_calls: int = Field(default=100, ge=1, le=100_000)
    passwords: dict[str, SecretStr] = Field(default_factory=dict)

    _port = field_validator("port")(_check_port)

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = "/" + value.strip("/")
        return "" if value == "/" else value

    @model_validator(mode="after")
    def _tls_pair(self) -> ChargersSettings:
        if bool(self.tls_cert) != bool(self.tls_key):
            missing = "tls_key" if self.tls_cert else "tls_cert"
            raise ValueError(f"{missing} must be set together with the other (tls_cert, tls_key)")
        if self.client_certs != "none" and not self.tls_cert:
            raise ValueError("client_certs needs TLS: set tls_cert and tls_key")
        if self.client_certs != "none" and not self.tls_ca:
            raise ValueError("client_certs needs tls_ca, the CA bundle that signs the chargers")
        return self

    def password_for(self, charge_point_id: str) -> str | None:
        """The basic-auth password listed for ``charge_point_id``, or ``None`` if it is not listed.

        Charge point ids are case-sensitive, so an exact key wins. Keys set through the
        environment (``FLIPTURN_GATEWAY_CHARGERS__PASSWORDS__<ID>``) arrive lower-cased, because
        pydantic-settings reads the environment case-insensitively; an all-lower-case key therefore
        also matches the id whose lower-case form it is. Mixed-case keys (from the file or the JSON
        form of the variable) only ever match exactly.
        """
        secret = self.passwords.get(charge_point_id)
        if secret is None:
            secret = self.passwords.get(charge_point_id.lower())
        return None if secret is None else secret.get_secret_value()


class UpstreamSettings(_Section):
    url: str = ""
    call_timeout_s: float = Field(default=10.0, gt=0, le=600)
    pass_authorization: bool = True
    # Offer permessage-deflate to the cloud: ~7x fewer bytes on the link, ~25 KB of zlib
    # state per charger if the cloud accepts (docs/benchmarks.md "Memory per charger").
    compression: bool = True
    # Backoff cap of one link's reconnect attempts (a returning cloud is noticed sooner: any link
    # that connects, or a probe every few seconds, wakes every waiting link).
    reconnect_max_s: float = Field(default=60.0, gt=0, le=3600)
    # An optional cap on new upstream handshakes per second across all chargers; 0 = none. The
    # herd at a returning cloud is bounded by the handshakes in flight (at most 200, adapting to
    # how the cloud answers: gateway.core.pacer), which a healthy cloud completes in milliseconds.
    max_connects_per_s: float = Field(default=0.0, ge=0, le=10_000)
    tls_ca: str = ""  # verify the cloud against this CA bundle instead of the system store
    tls_cert: str = ""  # the gateway's client certificate toward the cloud (profile 3)
    tls_key: str = ""

    @field_validator("url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith(("ws://", "wss://")):
            raise ValueError("must start with ws:// or wss:// (or be empty for standalone mode)")
        return value

    @model_validator(mode="after")
    def _tls(self) -> UpstreamSettings:
        if bool(self.tls_cert) != bool(self.tls_key):
            missing = "tls_key" if self.tls_cert else "tls_cert"
            raise ValueError(f"{missing} must be set together with the other (tls_cert, tls_key)")
        if self.url.startswith("ws://") and (self.tls_ca or self.tls_cert):
            key = "tls_ca" if self.tls_ca else "tls_cert"
            raise ValueError(f"{key} is set but url is ws:// (TLS needs wss://)")
        return self


class FlipturnSettings(_Section):
    api_url: str = "https://api.getflipturn.com"
    api_key: SecretStr = SecretStr("")
    sync_interval_s: float = Field(default=300.0, ge=10)

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value


class OfflineSettings(_Section):
    unknown_tags: Literal["reject", "accept"] = "reject"
    heartbeat_interval_s: int = Field(default=300, ge=1, le=86400)


class StoreSettings(_Section):
    path: str = "gateway.db"


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: Port = 8080
    token: SecretStr = SecretStr("")

    _port = field_validator("port")(_check_port)


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class LocalListSettings(_Section):
    # Keep each charger's Local Authorization List equal to the synced Authorized access ids
    # (docs/tag-cache.md). Off by default: a CSMS may manage the list itself.
    push: bool = False
    max_entries: int = Field(default=0, ge=0)  # 0: the charger's own limit


class SiteSettings(_Section):
    """The site power guard (docs/site-power.md): whole amperes per phase, seconds."""

    # The depot's limit for EV charging; 0 turns the guard off.
    max_current_a: int = Field(default=0, ge=0, le=100_000)
    # "offline": engaged while a connected charger's cloud link is down; "always": all the time.
    mode: Literal["offline", "always"] = "offline"
    # The least a charging vehicle is given (IEC 61851-1 signals 6 A at the lowest); below it, 0.
    min_current_a: int = Field(default=6, ge=1, le=1000)
    charger_max_current_a: int = Field(default=32, ge=1, le=1000)
    voltage_v: float = Field(default=230.0, gt=0, le=1000)  # for chargers taking limits in W
    engage_after_s: float = Field(default=10.0, ge=0, le=86400)
    release_after_s: float = Field(default=60.0, ge=0, le=86400)
    chargers: dict[str, int] = Field(default_factory=dict)  # charge point id -> its maximum, A

    @field_validator("chargers", mode="before")
    @classmethod
    def _no_bool_maxima(cls, chargers: Any) -> Any:
        if isinstance(chargers, dict):
            for charger_id, max_a in chargers.items():
                if isinstance(max_a, bool):
                    raise ValueError(f"{charger_id}: must be a number of amperes, not a boolean")
        return chargers

    @field_validator("chargers")
    @classmethod
    def _charger_maxima(cls, chargers: dict[str, int]) -> dict[str, int]:
        for charger_id, max_a in chargers.items():
            if not 1 <= len(charger_id) <= 48:
                raise ValueError(f"{charger_id!r}: a charge point id has 1-48 characters")
            if not 1 <= max_a <= 1000:
                raise ValueError(f"{charger_id}: must be between 1 and 1000 (amperes)")
        return chargers

    @model_validator(mode="after")
    def _coherent(self) -> SiteSettings:
        if self.min_current_a > self.charger_max_current_a:
            raise ValueError(
                f"min_current_a ({self.min_current_a}) is above charger_max_current_a "
                f"({self.charger_max_current_a}): no charger could ever be given it"
            )
        if 0 < self.max_current_a < self.min_current_a:
            raise ValueError(
                f"max_current_a ({self.max_current_a}) is below min_current_a "
                f"({self.min_current_a}): no vehicle could ever charge; 0 turns the guard off"
            )
        low = sorted(cp for cp, max_a in self.chargers.items() if max_a < self.min_current_a)
        if low:
            raise ValueError(
                f"chargers.{low[0]} is below min_current_a ({self.min_current_a}): "
                "that charger could never be given a cap"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.max_current_a > 0

    def charger_max_a(self, charge_point_id: str) -> int:
        """The maximum current of ``charge_point_id``: its ``[site.chargers]`` entry, else the default.

        As for ``chargers.passwords``, an all-lower-case key (as the environment delivers it)
        also matches the id whose lower-case form it is.
        """
        found = self.chargers.get(charge_point_id)
        if found is None:
            found = self.chargers.get(charge_point_id.lower())
        return self.charger_max_current_a if found is None else found


class PortMapping(_Section):
    id: int
    charger: str = Field(min_length=1, max_length=48)
    connector: int = Field(ge=0)


class Settings(BaseSettings):
    """The whole configuration. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    chargers: ChargersSettings = ChargersSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    flipturn: FlipturnSettings = FlipturnSettings()
    offline: OfflineSettings = OfflineSettings()
    store: StoreSettings = StoreSettings()
    api: ApiSettings = ApiSettings()
    local_list: LocalListSettings = LocalListSettings()
    site: SiteSettings = SiteSettings()
    log: LogSettings = LogSettings()
    ports: tuple[PortMapping, ...] = ()

    @field_validator("ports")
    @classmethod
    def _unique_ports(cls, ports: tuple[PortMapping, ...]) -> tuple[PortMapping, ...]:
        seen: set[int] = set()
        for mapping in ports:
            if mapping.id in seen:
                raise ValueError(f"portId {mapping.id} is listed twice")
            seen.add(mapping.id)
        return ports

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file; the file (passed as init kwargs) beats the defaults.
        return (env_settings, init_settings)

    @property
    def standalone(self) -> bool:
        return not self.upstream.url


def resolve_config_path(cli_path: str | None) -> Path | None:
    """``--config``, else ``$FLIPTURN_GATEWAY_CONFIG``, else the system file if it exists."""
    if cli_path:
        return Path(cli_path)
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env)
    return SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(config)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{key}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(path: Path | None) -> Settings:
    """Read ``path`` (or only defaults and environment when ``None``).

    Raise :class:`ConfigError` naming the offending key.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc}") from exc
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc
    except SettingsError as exc:  # e.g. FLIPTURN_GATEWAY_PORTS holding invalid JSON
        raise ConfigError(f"invalid configuration in the environment: {exc}") from exc


def redact_url(url: str) -> str:
    """``url`` with the password of its user info (``wss://user:password@host``) as ``***``: for
    logs and output, which never show a secret."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data; every secret is ``"***"`` (or ``""`` if unset),
    and so is the password of a URL."""

    def walk(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return "***" if value.get_secret_value() else ""
        if isinstance(value, BaseModel):
            return {k: walk(getattr(value, k)) for k in type(value).model_fields}
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v) for v in value]
        return value

    result: dict[str, Any] = walk(settings)
    result["upstream"]["url"] = redact_url(settings.upstream.url)
    result["flipturn"]["api_url"] = redact_url(settings.flipturn.api_url)
    return result
