from __future__ import annotations

from pathlib import Path

import pytest

from workers.common.settings import (
    DEFAULT_DATABASE_URL,
    DEFAULT_KAFKA_BOOTSTRAP_SERVERS,
    Settings,
    SettingsError,
    redact_url,
)


def test_defaults_point_at_the_local_stack_and_nothing_is_external(tmp_path: Path) -> None:
    # A state dir of its own: the default bootstrap names every broker the stack records.
    settings = Settings.from_env({"WORKERS_STATE_DIR": str(tmp_path)})
    assert settings.kafka_bootstrap_servers == DEFAULT_KAFKA_BOOTSTRAP_SERVERS
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.external_services == frozenset()
    assert settings.kafka_client_config() == {"bootstrap.servers": DEFAULT_KAFKA_BOOTSTRAP_SERVERS}


def test_explicit_services_are_external() -> None:
    settings = Settings.from_env(
        {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "REDIS_URL": "redis://r:6379/1"}
    )
    assert settings.external_services == {"kafka", "redis"}
    assert settings.redis_url == "redis://r:6379/1"


def test_librdkafka_properties_from_file_json_and_variables_in_that_order(
    tmp_path: Path,
) -> None:
    config_file = tmp_path / "client.properties"
    config_file.write_text(
        "# secured cluster\nsecurity.protocol = SSL\nssl.ca.location=/ca.pem\nlinger.ms=1\n"
    )
    settings = Settings.from_env(
        {
            "KAFKA_CONFIG_FILE": str(config_file),
            "KAFKA_CONFIG_JSON": '{"linger.ms": 7, "enable.idempotence": true}',
            "KAFKA_CONFIG_security.protocol": "SASL_SSL",
            "KAFKA_CONFIG_sasl.password": "hunter2",
        }
    )
    assert settings.kafka_config == {
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": "/ca.pem",
        "linger.ms": "7",
        "enable.idempotence": "true",
        "sasl.password": "hunter2",
    }
    shown = settings.redacted()
    assert shown["kafka_config.sasl.password"] == "***"
    assert "hunter2" not in repr(shown)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAFKA_CONFIG_JSON": "[1]"}, "expected a JSON object"),
        ({"KAFKA_CONFIG_JSON": "{nope"}, "not valid JSON"),
        ({"KAFKA_CONFIG_bootstrap.servers": "x"}, "KAFKA_BOOTSTRAP_SERVERS"),
        ({"WORKERS_LOG_LEVEL": "LOUD"}, "log level must be one of"),
        ({"WORKERS_TOPIC_PARTITIONS": "0"}, "must be a positive integer"),
        ({"WORKERS_LOG_FORMAT": "xml"}, "WORKERS_LOG_FORMAT"),
    ],
)
def test_bad_values_give_specific_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_file_lines_without_equals_sign_name_the_line(tmp_path: Path) -> None:
    config_file = tmp_path / "bad.properties"
    config_file.write_text("linger.ms=1\noops\n")
    with pytest.raises(SettingsError, match=r"bad.properties:2: expected 'property=value'"):
        Settings.from_env({"KAFKA_CONFIG_FILE": str(config_file)})


def test_overrides_ignore_none_and_validate() -> None:
    settings = Settings.from_env({})
    assert settings.with_overrides(log_level=None) == settings
    assert settings.with_overrides(log_level="debug").log_level == "DEBUG"
    with pytest.raises(SettingsError, match="unknown settings: colour"):
        settings.with_overrides(colour="red")


def test_urls_are_redacted() -> None:
    assert redact_url("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    assert redact_url("redis://:pw@h/0") == "redis://:***@h/0"


@pytest.mark.parametrize("raw", ["-1", "4096", "eu"])
def test_snowflake_region_is_validated(raw: str) -> None:
    with pytest.raises(
        SettingsError, match=r"WORKERS_SNOWFLAKE_REGION must be an integer 0\.\.4095"
    ):
        Settings.from_env({"WORKERS_SNOWFLAKE_REGION": raw})


def test_snowflake_region_bounds_are_accepted() -> None:
    assert Settings.from_env({"WORKERS_SNOWFLAKE_REGION": "4095"}).snowflake_region == 4095
    assert Settings.from_env({}).snowflake_region == 0


def test_s3_settings_are_read_and_the_secret_is_masked() -> None:
    settings = Settings.from_env(
        {
            "BLOB_STORAGE_URL": "s3://bucket/prefix",
            "S3_ENDPOINT_URL": "http://127.0.0.1:9000",
            "S3_ACCESS_KEY_ID": "AKIA",
            "S3_SECRET_ACCESS_KEY": "very-secret",
            "S3_ADDRESSING_STYLE": "path",
        }
    )
    assert settings.blob_storage_url == "s3://bucket/prefix"
    assert settings.s3_addressing_style == "path"
    shown = settings.redacted()
    assert shown["s3_secret_access_key"] == "***"
    assert "very-secret" not in repr(shown)
    with pytest.raises(SettingsError, match="S3_ADDRESSING_STYLE must be one of auto, path"):
        Settings.from_env({"S3_ADDRESSING_STYLE": "sideways"})


def test_blob_storage_sync_is_read_and_checked() -> None:
    assert Settings.from_env({}).blob_storage_sync == "auto"
    assert Settings.from_env({"BLOB_STORAGE_SYNC": "file"}).blob_storage_sync == "file"
    with pytest.raises(SettingsError, match="BLOB_STORAGE_SYNC must be one of auto, file"):
        Settings.from_env({"BLOB_STORAGE_SYNC": "never"})
