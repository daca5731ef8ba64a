"""`workers ids decode` (no Redis needed) and the `ids` group on the root CLI."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from workers.cli import make_cli
from workers.common.snowflake import encode_leased_id
from workers.common.snowflake.cli import ids
from workers.fleet import FLEET_REGISTRY_LOADER


def test_decode_prints_the_spec_vector() -> None:
    result = CliRunner().invoke(ids, ["decode", "4506493067984915"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "layout: sentry",
        "timestamp: 2024-01-01T00:00:00+00:00",
        "region: 1",
        "sequence: 3",
    ]


def test_decode_detects_a_blob_id() -> None:
    blob_id = encode_leased_id(1_704_067_200_123, worker_id=513, sequence=4000)
    result = CliRunner().invoke(ids, ["decode", str(blob_id)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "layout: blob",
        "timestamp: 2024-01-01T00:00:00.123+00:00",
        "worker_id: 513",
        "sequence: 4000",
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["decode", "abc"], "ID must be a positive decimal integer, got 'abc'"),
        (["decode", "1_000"], "ID must be a positive decimal integer"),
        (["decode", "--", "-5"], "ID must be a positive decimal integer"),
        (["decode", "0"], "0 is not a snowflake id"),
        (["decode", str(2**63)], "not a snowflake id"),
        (["decode", "12345"], "version bits (48-52) are 0, not 16"),
        (["decode", "--layout", "blob", "4506493067984915"], "not a blob-layout id"),
    ],
)
def test_decode_errors_are_one_clear_line(arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(ids, arguments)
    assert result.exit_code == 1
    assert message in result.output
    assert result.output.startswith("Error: ")
    assert "Traceback" not in result.output


def test_root_cli_has_the_ids_group() -> None:
    result = CliRunner().invoke(make_cli(FLEET_REGISTRY_LOADER), ["ids", "--help"])
    assert result.exit_code == 0, result.output
    assert "generate" in result.output
    assert "decode" in result.output
