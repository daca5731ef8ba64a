"""The options document served by a real gateway process configured with a public URL and
zstd switched off: the `url` by User-Agent and the advertised codecs (docs/reference.md,
Upload options). The defaults are checked in test_gateway.py, test_options_document."""

from __future__ import annotations

import uuid

import httpx
import psycopg
import pytest

from harness.gateway import GatewayProcess
from harness.kafka import unique_name
from workers.common.projects import create_organization
from workers.common.settings import Settings
from workers.gateway.options import ACCEPT
from workers.gateway.tokens import create_token

pytestmark = pytest.mark.integration

PUBLIC_URL = "https://sentry.example.com"


def test_a_configured_gateway_answers_each_client_its_url_and_only_gzip() -> None:
    settings = Settings.from_env()
    slug = f"gwo-{uuid.uuid4().hex[:10]}"
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        create_organization(connection, slug, None)
        token = create_token(connection, slug, ["project:read"]).token
    topic = unique_name("gateway-options")
    gateway = GatewayProcess(
        "--topic",
        topic,
        "--upload-compression",
        "gzip",
        env={"GATEWAY_PUBLIC_URL": f"{PUBLIC_URL}/", "GATEWAY_UPLOAD_URL_PREFIX": ""},
        log_name=topic,
    )
    relative = f"organizations/{slug}/chunk-upload/"
    absolute = f"{PUBLIC_URL}/api/0/{relative}"
    try:
        with httpx.Client(
            base_url=gateway.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client:
            answers = {
                agent: client.get(f"/api/0/{relative}", headers={"User-Agent": agent})
                for agent in (
                    "sentry-cli/1.70.1",
                    "sentry-cli/2.29.999",
                    "sentry-cli/2.30.0",
                    "sentry-cli/3.8.2",
                    "sentry-cli/1.70.0",
                    "curl/8.5.0",
                )
            }
    finally:
        assert gateway.stop() == 0
    assert {agent: answer.status_code for agent, answer in answers.items()} == dict.fromkeys(
        answers, 200
    )
    urls = {agent: answer.json()["url"] for agent, answer in answers.items()}
    assert urls == {
        "sentry-cli/1.70.1": relative,
        "sentry-cli/2.29.999": relative,
        "sentry-cli/2.30.0": absolute,
        "sentry-cli/3.8.2": absolute,
        "sentry-cli/1.70.0": absolute,
        "curl/8.5.0": absolute,
    }
    options = answers["sentry-cli/3.8.2"].json()
    assert options["compression"] == ["gzip"]
    assert options["maxFileSize"] == 2**32
    assert options["accept"] == list(ACCEPT)
    assert {"preprod_artifacts", "dartsymbolmap"} <= set(options["accept"])
