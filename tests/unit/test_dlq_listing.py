"""`workers dlq list` counts and a replay's batches and verdicts, without Kafka."""

from __future__ import annotations

from click.testing import CliRunner

from tests.support.dead_letters import DLQ_TOPIC, dead_letter
from workers.cli import make_cli
from workers.dlq.listing import UNATTRIBUTED, list_lines, summarize
from workers.dlq.replay import batches, verdict
from workers.fleet import FLEET_REGISTRY_LOADER


def test_messages_are_counted_per_worker_and_reason_with_oldest_newest_and_replayed() -> None:
    letters = [
        dead_letter(0, reason="invalid_json: x", timestamp_ms=3_000),
        dead_letter(1, reason="invalid_json: y", timestamp_ms=1_000),
        dead_letter(2, reason="missing_field: org_id", timestamp_ms=2_000),
        dead_letter(3, reason="invalid_json: z", timestamp_ms=None, worker=None),
        dead_letter(4, reason="poison_pill", worker="other"),
    ]
    claims = {letters[0].position: "produced", letters[2].position: "claimed"}
    found = summarize(DLQ_TOPIC, ["billing"], letters, claims)
    assert [summary.worker for summary in found] == ["billing", "other"]
    billing = found[0].reasons
    assert sorted(billing) == ["invalid_json", "missing_field"]
    assert (billing["invalid_json"].count, billing["invalid_json"].replayed) == (3, 1)
    assert (billing["invalid_json"].oldest_ms, billing["invalid_json"].newest_ms) == (1000, 3000)
    assert (billing["missing_field"].count, billing["missing_field"].replayed) == (1, 1)
    assert found[1].reasons["poison_pill"].count == 1


def test_a_shared_topic_attributes_messages_without_a_worker_header_to_nobody() -> None:
    found = summarize(DLQ_TOPIC, ["a", "b"], [dead_letter(0, worker=None)], {})
    assert [(summary.worker, len(summary.reasons)) for summary in found] == [
        (UNATTRIBUTED, 1),
        ("a", 0),
        ("b", 0),
    ]


def test_the_list_shows_one_line_per_reason_most_frequent_first_and_empty_dlqs() -> None:
    letters = [dead_letter(0, reason="b_code"), dead_letter(1), dead_letter(2)]
    lines = list_lines(
        [
            *summarize(DLQ_TOPIC, ["billing"], letters, {}),
            *summarize("other-dlq", ["blob-ingest"], [], {}),
        ]
    )
    assert lines[0].split() == ["WORKER", "DLQ", "TOPIC", "REASON", "COUNT", "REPLAYED",
                                "OLDEST", "NEWEST"]  # fmt: skip
    assert lines[1].split() == ["billing", DLQ_TOPIC, "invalid_json", "2", "0",
                                "2023-11-14T22:13:20.000Z", "2023-11-14T22:13:20.000Z"]  # fmt: skip
    assert lines[2].split()[2:4] == ["b_code", "1"]
    assert lines[3].split() == ["blob-ingest", "other-dlq", "(empty)", "0", "-", "-", "-"]
    unknown = list_lines(summarize(DLQ_TOPIC, ["billing"], letters, {}), False)
    assert unknown[1].split()[4] == "?"


def test_a_replay_batch_is_capped_by_count_and_by_bytes() -> None:
    letters = [dead_letter(offset, value=b"x" * 100) for offset in range(7)]
    assert [len(batch) for batch in batches(letters, max_messages=3)] == [3, 3, 1]
    assert [len(batch) for batch in batches(letters, max_bytes=250)] == [2, 2, 2, 1]
    huge = [dead_letter(0, value=b"x" * 1000), dead_letter(1, value=b"x")]
    assert [len(batch) for batch in batches(huge, max_bytes=250)] == [1, 1]
    assert [letter.position.offset for batch in batches(letters) for letter in batch] == list(
        range(7)
    )


def test_a_message_is_replayed_unless_claimed_before_or_without_an_origin() -> None:
    letter = dead_letter(1)
    assert verdict(letter, {}) == "replay"
    assert verdict(letter, {letter.position: "produced"}) == "already produced"
    assert verdict(letter, {letter.position: "claimed"}) == "already claimed"
    # --retry-unconfirmed: a claim left unanswered, whose replay the original topic lacks.
    assert verdict(letter, {letter.position: "failed"}, frozenset({letter.position})) == "retry"
    bare = dead_letter(2)
    bare = type(bare)(bare.position, None, None, b"x", (("reason", b"r"),))
    assert verdict(bare, {}) == "unreplayable"


def test_the_dlq_commands_check_the_worker_and_the_time_range_before_reading() -> None:
    cli = make_cli(FLEET_REGISTRY_LOADER)
    runner = CliRunner()
    unknown = runner.invoke(cli, ["dlq", "show", "nosuch"])
    assert unknown.exit_code == 2
    assert "no consumer named 'nosuch'" in unknown.output
    backwards = runner.invoke(cli, ["dlq", "replay", "billing", "--since", "1h", "--until", "2h"])
    assert backwards.exit_code == 2
    assert "--since must be before --until" in backwards.output
    bad_time = runner.invoke(cli, ["dlq", "replay", "billing", "--since", "yesterday"])
    assert bad_time.exit_code == 2
    assert "ISO 8601" in bad_time.output
