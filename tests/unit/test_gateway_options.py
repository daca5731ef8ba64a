"""The options document of `GET .../chunk-upload/`: values, the `url` by User-Agent, the
codecs advertised, and the settings behind them (docs/reference.md, Upload options)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from workers.common.settings import GATEWAY_UPLOAD_CODECS, Settings, SettingsError
from workers.gateway import cli as gateway_cli
from workers.gateway.options import (
    ACCEPT,
    COMPRESSION,
    UploadLimits,
    UploadUrls,
    chunk_upload_options,
    sentry_cli_version,
    upload_url,
)
from workers.gateway.services import GatewayConfig

PUBLIC = "https://sentry.example.com"
PREFIX = "https://uploads.example.com"
RELATIVE = "organizations/acme/chunk-upload/"
ABSOLUTE = f"{PUBLIC}/api/0/{RELATIVE}"
PREFIXED = f"{PREFIX}/api/0/{RELATIVE}"

# Sentry's own cases (tests/sentry/api/endpoints/test_chunk_upload.py, test_relative_url_support
# and test_region_upload_urls), the public URL standing in for Sentry's url-prefix, plus the
# sentry-cli this fleet is checked against (3.8.2) and clients that are not sentry-cli.
USER_AGENT_CASES = [
    ("sentry-cli/1.70.1", RELATIVE),
    ("sentry-cli/2.20.5", RELATIVE),
    ("sentry-cli/2.29.999", RELATIVE),
    ("sentry-cli/2.30.0", ABSOLUTE),
    # Older Sentry tests expected a relative url here; since the 2.30.0 bound it is absolute.
    ("sentry-cli/2.77.4", ABSOLUTE),
    ("sentry-cli/3.8.2", ABSOLUTE),
    ("sentry-cli/1.70.0", ABSOLUTE),
    ("sentry-cli/0.69.3", ABSOLUTE),
    ("sentry-cli/1.70.1 (Linux x86_64) rust", RELATIVE),
    ("sentry-cli/2.1.0-beta.1", RELATIVE),
    (None, ABSOLUTE),
    ("", ABSOLUTE),
    ("curl/8.5.0", ABSOLUTE),
    ("python-requests/2.31.0", ABSOLUTE),
    ("Mozilla/5.0 sentry-cli/2.20.5", ABSOLUTE),
    ("Sentry-CLI/2.20.5", ABSOLUTE),
    ("sentry-cli/2.20", ABSOLUTE),
    ("sentry-cli/" + "9" * 5000 + ".0.0", ABSOLUTE),
]


@pytest.mark.parametrize(("user_agent", "expected"), USER_AGENT_CASES)
def test_url_by_user_agent_as_sentry_chooses_it(user_agent: str | None, expected: str) -> None:
    assert upload_url("acme", UploadUrls(public_url=PUBLIC), user_agent) == expected


@pytest.mark.parametrize(("user_agent", "_expected"), USER_AGENT_CASES)
def test_upload_url_prefix_wins_for_every_client(user_agent: str | None, _expected: str) -> None:
    # Sentry: "user overridden upload url prefix has priority, even when calling from
    # sentry-cli that supports relative urls".
    for public_url in (None, PUBLIC):
        urls = UploadUrls(public_url=public_url, upload_url_prefix=PREFIX)
        assert upload_url("acme", urls, user_agent) == PREFIXED


@pytest.mark.parametrize(("user_agent", "_expected"), USER_AGENT_CASES)
def test_without_a_public_url_every_client_gets_the_relative_url(
    user_agent: str | None, _expected: str
) -> None:
    assert upload_url("acme", UploadUrls(), user_agent) == RELATIVE


@pytest.mark.parametrize(
    ("user_agent", "version"),
    [
        ("sentry-cli/1.70.1", (1, 70, 1)),
        ("sentry-cli/2.29.999 (Darwin arm64)", (2, 29, 999)),
        ("sentry-cli/10.0.3-rc", (10, 0, 3)),
        ("sentry-cli/1.2", None),
        ("x sentry-cli/1.2.3", None),
        ("sentry-cli/1.2.1234567890", None),
        (None, None),
    ],
)
def test_sentry_cli_version(user_agent: str | None, version: tuple[int, int, int] | None) -> None:
    assert sentry_cli_version(user_agent) == version


def test_the_document_has_today_s_values_and_every_key_sentry_cli_needs() -> None:
    options = chunk_upload_options("acme", UploadLimits(), user_agent="sentry-cli/2.20.5")
    # sentry-cli fails when one of these is missing.
    for key in ("url", "chunkSize", "chunksPerRequest", "maxRequestSize", "hashAlgorithm"):
        assert key in options
    assert options == {
        "url": RELATIVE,
        "chunkSize": 8388608,
        "chunksPerRequest": 64,
        "maxFileSize": 4294967296,
        "maxRequestSize": 33554432,
        "concurrency": 8,
        "hashAlgorithm": "sha1",
        "compression": ["gzip", "zstd"],
        "accept": [
            "debug_files",
            "release_files",
            "pdbs",
            "sources",
            "bcsymbolmaps",
            "il2cpp",
            "portablepdbs",
            "artifact_bundles",
            "artifact_bundles_v2",
            "proguard",
            "preprod_artifacts",
            "dartsymbolmap",
        ],
    }
    # sentry-cli 2.39.1 and older refuse a chunk size that is not a power of two.
    assert options["chunkSize"] & (options["chunkSize"] - 1) == 0
    assert list(ACCEPT) == options["accept"]


@pytest.mark.parametrize(
    ("advertised", "expected"),
    [
        (COMPRESSION, ["gzip", "zstd"]),
        (("zstd", "gzip"), ["gzip", "zstd"]),
        (("gzip",), ["gzip"]),
        (("zstd",), ["zstd"]),
        ((), []),
        (("gzip", "br"), ["gzip"]),
    ],
)
def test_compression_advertised_is_the_configured_subset_in_sentry_s_order(
    advertised: tuple[str, ...], expected: list[str]
) -> None:
    options = chunk_upload_options("acme", UploadLimits(), compression=advertised)
    assert options["compression"] == expected


def test_the_gateway_config_feeds_the_document() -> None:
    config = GatewayConfig(public_url=PUBLIC, upload_url_prefix=None, upload_compression=("gzip",))
    options = chunk_upload_options(
        "acme",
        config.limits,
        urls=config.upload_urls,
        user_agent="sentry-cli/0.69.3",
        compression=config.upload_compression,
    )
    assert (options["url"], options["compression"]) == (ABSOLUTE, ["gzip"])
    assert GatewayConfig().upload_compression == COMPRESSION == GATEWAY_UPLOAD_CODECS


def test_upload_settings_are_validated() -> None:
    default = Settings.from_env({})
    assert default.gateway_upload_url_prefix is None
    assert default.gateway_upload_compression == ("gzip", "zstd")
    settings = Settings.from_env(
        {"GATEWAY_UPLOAD_URL_PREFIX": f"{PREFIX}/", "GATEWAY_UPLOAD_COMPRESSION": "zstd, GZIP"}
    )
    assert settings.gateway_upload_url_prefix == PREFIX
    assert settings.gateway_upload_compression == ("gzip", "zstd")
    assert settings.redacted()["gateway_upload_compression"] == "gzip,zstd"
    for raw, expected in (("gzip", ("gzip",)), ("none", ()), ("NONE", ())):
        parsed = Settings.from_env({"GATEWAY_UPLOAD_COMPRESSION": raw})
        assert parsed.gateway_upload_compression == expected
    assert (
        Settings.from_env({"GATEWAY_UPLOAD_COMPRESSION": "none"}).redacted()[
            "gateway_upload_compression"
        ]
        == "none"
    )
    with pytest.raises(SettingsError, match="GATEWAY_UPLOAD_URL_PREFIX"):
        Settings.from_env({"GATEWAY_UPLOAD_URL_PREFIX": "uploads.example.com"})
    for bad in ("br", "gzip,br", "gzip,,zstd", "none,gzip"):
        with pytest.raises(SettingsError, match="GATEWAY_UPLOAD_COMPRESSION"):
            Settings.from_env({"GATEWAY_UPLOAD_COMPRESSION": bad})


def test_serve_gateway_flags_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[GatewayConfig] = []

    def fake_run_gateway(_settings: object, config: GatewayConfig, *_args: object) -> None:
        served.append(config)

    monkeypatch.setattr(gateway_cli, "run_gateway", fake_run_gateway)
    monkeypatch.delenv("GATEWAY_UPLOAD_URL_PREFIX", raising=False)
    monkeypatch.setenv("GATEWAY_UPLOAD_COMPRESSION", "none")
    result = CliRunner().invoke(
        gateway_cli.serve,
        ["gateway", "--upload-url-prefix", PREFIX, "--upload-compression", "gzip"],
    )
    assert result.exit_code == 0, result.output
    assert (served[0].upload_url_prefix, served[0].upload_compression) == (PREFIX, ("gzip",))
    # Without flags, the environment decides.
    result = CliRunner().invoke(gateway_cli.serve, ["gateway"])
    assert result.exit_code == 0, result.output
    assert (served[1].upload_url_prefix, served[1].upload_compression) == (None, ())
