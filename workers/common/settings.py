"""The fleet's one typed settings object, read from the environment.

Every field has a local default that points at the stack `workers stack up` runs, so a
newcomer needs no configuration at all. CLI flags override fields through
`Settings.with_overrides`. Extra librdkafka properties come from three places, applied in
this order (later wins): `KAFKA_CONFIG_FILE` (a JSON object or `key=value` lines),
`KAFKA_CONFIG_JSON` (a JSON object) and `KAFKA_CONFIG_<property>` variables, e.g.
`KAFKA_CONFIG_security.protocol=SASL_SSL`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from workers.common.local_kafka import LayoutError, local_bootstrap_servers, recorded_brokers

LogFormat = Literal["auto", "json", "console"]

# Below Linux's ephemeral range (32768-60999): a port in it can be taken by any outgoing
# connection, a readiness probe's included, while its server is down or restarting, and
# then the server cannot bind it (docs/operations.md, Local stack).
DEFAULT_KAFKA_PORT = 19092
DEFAULT_POSTGRES_PORT = 15432
DEFAULT_REDIS_PORT = 16379

DEFAULT_KAFKA_BOOTSTRAP_SERVERS = f"127.0.0.1:{DEFAULT_KAFKA_PORT}"
DEFAULT_DATABASE_URL = f"postgresql://workers@127.0.0.1:{DEFAULT_POSTGRES_PORT}/workers"
DEFAULT_REDIS_URL = f"redis://127.0.0.1:{DEFAULT_REDIS_PORT}/0"
# The chunk codecs the gateway decodes, in Sentry's order (workers/gateway/options.py).
GATEWAY_UPLOAD_CODECS: tuple[str, ...] = ("gzip", "zstd")

KAFKA_CONFIG_PREFIX = "KAFKA_CONFIG_"
# These two are read by the settings themselves; they are not librdkafka properties.
_KAFKA_CONFIG_META_VARIABLES = frozenset({"KAFKA_CONFIG_FILE", "KAFKA_CONFIG_JSON"})

# Secrets never appear in logs or in `workers config`; they are matched by substring.
_SECRET_MARKERS = ("password", "secret", "token", "sasl.oauthbearer", "ssl.key")


class SettingsError(ValueError):
    """A setting has a value the fleet cannot use; the message names the variable."""


@dataclass(frozen=True)
class EnvironmentVariable:
    """Documentation of one environment variable (a row of docs/operations.md, Configuration)."""

    name: str
    default: str
    meaning: str


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str = DEFAULT_KAFKA_BOOTSTRAP_SERVERS
    kafka_config: Mapping[str, str] = field(default_factory=dict)
    database_url: str = DEFAULT_DATABASE_URL
    database_pool_max_size: int = 8
    redis_url: str = DEFAULT_REDIS_URL
    state_dir: Path = Path(".stack")
    log_level: str = "INFO"
    log_format: LogFormat = "auto"
    topic_partitions: int = 4
    # Snowflake region (docs/reference.md, Snowflake ids): 12 bits, 0 = single region.
    snowflake_region: int = 0
    # Blob storage: `file:///path` or `s3://bucket/prefix`; None = `<state_dir>/blobs`.
    blob_storage_url: str | None = None
    # How file storage makes a batch durable (docs/blob-ingest.md, Storage).
    blob_storage_sync: str = "auto"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_addressing_style: str = "auto"
    # Chunk-upload gateway: absolute base URL clients reach it by; None = relative upload urls.
    gateway_public_url: str | None = None
    # Base URL every client is told to upload to instead (Sentry's upload-url prefix); None = off.
    gateway_upload_url_prefix: str | None = None
    # Codecs the gateway advertises in its upload options (docs/reference.md, Upload options).
    gateway_upload_compression: tuple[str, ...] = GATEWAY_UPLOAD_CODECS
    # Which services were configured explicitly: the local stack leaves those alone.
    external_services: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        environ: Mapping[str, str] = os.environ if env is None else env
        external = frozenset(
            service
            for service, variable in (
                ("kafka", "KAFKA_BOOTSTRAP_SERVERS"),
                ("postgres", "DATABASE_URL"),
                ("redis", "REDIS_URL"),
            )
            if environ.get(variable)
        )
        state_dir = Path(environ.get("WORKERS_STATE_DIR") or ".stack").absolute()
        return cls(
            kafka_bootstrap_servers=environ.get("KAFKA_BOOTSTRAP_SERVERS")
            or _local_bootstrap_servers(state_dir),
            kafka_config=read_kafka_config(environ),
            database_url=environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            database_pool_max_size=_positive_int(environ, "DATABASE_POOL_MAX_SIZE", 8),
            redis_url=environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
            state_dir=state_dir,
            log_level=_log_level(environ.get("WORKERS_LOG_LEVEL") or "INFO"),
            log_format=_log_format(environ.get("WORKERS_LOG_FORMAT") or "auto"),
            topic_partitions=_positive_int(environ, "WORKERS_TOPIC_PARTITIONS", 4),
            snowflake_region=_snowflake_region(environ.get("WORKERS_SNOWFLAKE_REGION") or "0"),
            blob_storage_url=environ.get("BLOB_STORAGE_URL") or None,
            blob_storage_sync=_choice(
                environ, "BLOB_STORAGE_SYNC", ("auto", "file", "filesystem"), "auto"
            ),
            s3_endpoint_url=environ.get("S3_ENDPOINT_URL") or None,
            s3_region=environ.get("S3_REGION") or None,
            s3_access_key_id=environ.get("S3_ACCESS_KEY_ID") or None,
            s3_secret_access_key=environ.get("S3_SECRET_ACCESS_KEY") or None,
            s3_addressing_style=_choice(
                environ, "S3_ADDRESSING_STYLE", ("auto", "path", "virtual"), "auto"
            ),
            gateway_public_url=_public_url(environ.get("GATEWAY_PUBLIC_URL") or None),
            gateway_upload_url_prefix=_public_url(
                environ.get("GATEWAY_UPLOAD_URL_PREFIX") or None, "GATEWAY_UPLOAD_URL_PREFIX"
            ),
            gateway_upload_compression=_upload_compression(
                environ.get("GATEWAY_UPLOAD_COMPRESSION") or None
            ),
            external_services=external,
        )

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the given fields replaced; `None` means "not given" and is ignored."""
        given = {name: value for name, value in overrides.items() if value is not None}
        unknown = given.keys() - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise SettingsError(f"unknown settings: {', '.join(sorted(unknown))}")
        if "log_level" in given:
            given["log_level"] = _log_level(str(given["log_level"]))
        return dataclasses.replace(self, **given)

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka properties shared by every consumer, producer and admin client."""
        return {"bootstrap.servers": self.kafka_bootstrap_servers, **self.kafka_config}

    def redacted(self) -> dict[str, str]:
        """The settings as strings with credentials masked, safe to log or print."""
        shown: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "kafka_config":
                for key, item in sorted(value.items()):
                    secret = any(marker in key for marker in _SECRET_MARKERS)
                    shown[f"kafka_config.{key}"] = "***" if secret else item
            elif f.name in ("database_url", "redis_url"):
                shown[f.name] = redact_url(value)
            elif f.name == "external_services":
                shown[f.name] = ",".join(sorted(value)) or "-"
            elif f.name == "gateway_upload_compression":
                shown[f.name] = ",".join(value) or "none"
            elif any(marker in f.name for marker in _SECRET_MARKERS):
                shown[f.name] = "-" if value is None else "***"
            else:
                shown[f.name] = str(value)
        return shown


def _local_bootstrap_servers(state_dir: Path) -> str:
    """Every broker of the local stack: one unless `workers stack up --brokers 3` ran."""
    try:
        brokers = recorded_brokers(state_dir)
    except LayoutError as error:
        raise SettingsError(f"WORKERS_STATE_DIR: {error}") from None
    return local_bootstrap_servers(DEFAULT_KAFKA_PORT, brokers)


def read_kafka_config(environ: Mapping[str, str]) -> dict[str, str]:
    config: dict[str, str] = {}
    path = environ.get("KAFKA_CONFIG_FILE")
    if path:
        config.update(_parse_kafka_config_text(Path(path).read_text(), source=path))
    inline = environ.get("KAFKA_CONFIG_JSON")
    if inline:
        config.update(_parse_kafka_config_json(inline, source="KAFKA_CONFIG_JSON"))
    for name, value in environ.items():
        if name.startswith(KAFKA_CONFIG_PREFIX) and name not in _KAFKA_CONFIG_META_VARIABLES:
            key = name[len(KAFKA_CONFIG_PREFIX) :]
            if not key:
                raise SettingsError(f"{name}: empty librdkafka property name")
            config[key] = value
    if "bootstrap.servers" in config:
        raise SettingsError("set the brokers with KAFKA_BOOTSTRAP_SERVERS, not KAFKA_CONFIG_*")
    return config


def _parse_kafka_config_text(text: str, source: str) -> dict[str, str]:
    if text.lstrip().startswith("{"):
        return _parse_kafka_config_json(text, source)
    config: dict[str, str] = {}
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        key, separator, value = line.partition("=")
        if not separator or not key.strip():
            raise SettingsError(f"{source}:{number}: expected 'property=value'")
        config[key.strip()] = value.strip()
    return config


def _parse_kafka_config_json(text: str, source: str) -> dict[str, str]:
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise SettingsError(f"{source}: not valid JSON ({error})") from None
    if not isinstance(parsed, dict):
        raise SettingsError(f"{source}: expected a JSON object of librdkafka properties")
    config: dict[str, str] = {}
    for key, value in parsed.items():
        if isinstance(value, bool):
            config[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            config[key] = str(value)
        else:
            raise SettingsError(f"{source}: property {key!r} must be a string, number or bool")
    return config


def redact_url(url: str) -> str:
    """`scheme://user:secret@host/db` → `scheme://user:***@host/db`."""
    scheme, separator, rest = url.partition("://")
    if not separator or "@" not in rest:
        return url
    credentials, _, location = rest.rpartition("@")
    user, has_password, _ = credentials.partition(":")
    return f"{scheme}://{user}{':***' if has_password else ''}@{location}"


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise SettingsError(f"{name} must be a positive integer, got {raw!r}")
    return value


def _choice(environ: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = environ.get(name) or default
    if value not in allowed:
        raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _public_url(raw: str | None, name: str = "GATEWAY_PUBLIC_URL") -> str | None:
    if raw is None:
        return None
    scheme, separator, rest = raw.partition("://")
    if scheme not in ("http", "https") or not separator or not rest.strip("/"):
        raise SettingsError(
            f"{name} must be an absolute http(s) URL, e.g. https://uploads.example.com, got {raw!r}"
        )
    return raw.rstrip("/")


def _upload_compression(raw: str | None) -> tuple[str, ...]:
    """`gzip,zstd` (the default), a subset of it, or `none`; kept in Sentry's order."""
    if raw is None:
        return GATEWAY_UPLOAD_CODECS
    if raw.strip().lower() == "none":
        return ()
    codecs = {codec.strip().lower() for codec in raw.split(",")}
    if not codecs <= set(GATEWAY_UPLOAD_CODECS):
        raise SettingsError(
            "GATEWAY_UPLOAD_COMPRESSION must be `none` or a comma-separated subset of"
            f" {','.join(GATEWAY_UPLOAD_CODECS)}, got {raw!r}"
        )
    return tuple(codec for codec in GATEWAY_UPLOAD_CODECS if codec in codecs)


MAX_SNOWFLAKE_REGION = 4095


def _snowflake_region(raw: str) -> int:
    try:
        region = int(raw)
    except ValueError:
        region = -1
    if not 0 <= region <= MAX_SNOWFLAKE_REGION:
        raise SettingsError(
            f"WORKERS_SNOWFLAKE_REGION must be an integer 0..{MAX_SNOWFLAKE_REGION}, got {raw!r}"
        )
    return region


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in _LOG_LEVELS:
        raise SettingsError(f"log level must be one of {', '.join(_LOG_LEVELS)}, got {raw!r}")
    return level


def _log_format(raw: str) -> LogFormat:
    if raw == "auto":
        return "auto"
    if raw == "json":
        return "json"
    if raw == "console":
        return "console"
    raise SettingsError(f"WORKERS_LOG_FORMAT must be auto, json or console, got {raw!r}")


ENVIRONMENT_VARIABLES: tuple[EnvironmentVariable, ...] = (
    EnvironmentVariable(
        "KAFKA_BOOTSTRAP_SERVERS",
        DEFAULT_KAFKA_BOOTSTRAP_SERVERS,
        "Kafka brokers. When set, `workers stack` does not start Kafka. Unset: every broker "
        "of the local stack (three after `workers stack up --brokers 3`).",
    ),
    EnvironmentVariable(
        "KAFKA_CONFIG_<property>",
        "-",
        "Any librdkafka property for every client, e.g. `KAFKA_CONFIG_security.protocol=SASL_SSL`.",
    ),
    EnvironmentVariable("KAFKA_CONFIG_JSON", "-", "librdkafka properties as one JSON object."),
    EnvironmentVariable(
        "KAFKA_CONFIG_FILE",
        "-",
        "Path to librdkafka properties: a JSON object or `property=value` lines.",
    ),
    EnvironmentVariable(
        "DATABASE_URL",
        DEFAULT_DATABASE_URL,
        "PostgreSQL URL. When set, `workers stack` does not start PostgreSQL.",
    ),
    EnvironmentVariable("DATABASE_POOL_MAX_SIZE", "8", "Connections per process pool."),
    EnvironmentVariable(
        "REDIS_URL", DEFAULT_REDIS_URL, "Redis URL. When set, `workers stack` does not start Redis."
    ),
    EnvironmentVariable(
        "WORKERS_STATE_DIR",
        ".stack",
        "Local stack state: Kafka jars, data directories, logs, pid files.",
    ),
    EnvironmentVariable(
        "WORKERS_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING, ERROR or CRITICAL (`--log-level`)."
    ),
    EnvironmentVariable(
        "WORKERS_LOG_FORMAT",
        "auto",
        "`json` (one object per line), `console`, or `auto`: console on a terminal, else JSON.",
    ),
    EnvironmentVariable(
        "WORKERS_TOPIC_PARTITIONS", "4", "Partitions of each topic `workers topics create` makes."
    ),
    EnvironmentVariable(
        "BLOB_STORAGE_URL",
        "file://<WORKERS_STATE_DIR>/blobs",
        "Where blob bytes live: `file:///absolute/path` or `s3://bucket/optional/prefix`.",
    ),
    EnvironmentVariable(
        "BLOB_STORAGE_SYNC",
        "auto",
        "File storage: `filesystem` (one syncfs per batch), `file` (fsync per file) or `auto`.",
    ),
    EnvironmentVariable(
        "S3_ENDPOINT_URL", "-", "S3-compatible server, e.g. `http://127.0.0.1:9000`; unset = AWS."
    ),
    EnvironmentVariable("S3_REGION", "-", "S3 region name."),
    EnvironmentVariable(
        "S3_ACCESS_KEY_ID", "-", "S3 access key; unset = boto3's default credential chain."
    ),
    EnvironmentVariable("S3_SECRET_ACCESS_KEY", "-", "S3 secret key (never logged)."),
    EnvironmentVariable(
        "S3_ADDRESSING_STYLE", "auto", "`path` for most self-hosted servers, `virtual` or `auto`."
    ),
    EnvironmentVariable(
        "WORKERS_SNOWFLAKE_REGION",
        "0",
        "Region (0..4095) encoded in Sentry-layout snowflake ids; 0 = single region.",
    ),
    EnvironmentVariable(
        "GATEWAY_PUBLIC_URL",
        "-",
        "Base URL clients reach the chunk-upload gateway by, e.g. `https://uploads.example.com`: "
        "the absolute upload `url` of every client but sentry-cli 1.70.1 to 2.29.x; unset = "
        "relative to `/api/0/` for all.",
    ),
    EnvironmentVariable(
        "GATEWAY_UPLOAD_URL_PREFIX",
        "-",
        "Base URL the chunk-upload gateway tells every client to upload to, whatever its "
        "User-Agent (Sentry's upload-url prefix); unset = the public URL or a relative `url`.",
    ),
    EnvironmentVariable(
        "GATEWAY_UPLOAD_COMPRESSION",
        "gzip,zstd",
        "Codecs the chunk-upload gateway advertises in `compression`: `gzip,zstd`, `gzip` "
        "(zstd off), `zstd`, or `none`.",
    ),
)
