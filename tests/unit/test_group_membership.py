"""How consumers join their group: the protocol, and a static member restarted after a crash."""

from __future__ import annotations

from typing import Any

import pytest

from workers.common.kafka_config import (
    GROUP_PROTOCOL_CLASSIC,
    ConsumerOptions,
    consumer_configuration,
)
from workers.common.settings import Settings
from workers.common.static_membership import wait_for_previous_incarnation
from workers.stack.kafka_layout import kafka_layout, server_properties
from workers.stack.paths import StackPaths

SETTINGS = Settings(kafka_bootstrap_servers="127.0.0.1:1")


def test_consumers_use_the_consumer_group_protocol_by_default() -> None:
    config = consumer_configuration(SETTINGS, ConsumerOptions("g", group_instance_id="pod-0"))
    assert config["group.protocol"] == "consumer"
    assert config["group.instance.id"] == "pod-0"
    # With this protocol the broker owns failure detection and assignment.
    assert "session.timeout.ms" not in config
    assert "partition.assignment.strategy" not in config


def test_the_classic_protocol_can_be_chosen() -> None:
    options = ConsumerOptions("g", group_protocol=GROUP_PROTOCOL_CLASSIC)
    assert consumer_configuration(SETTINGS, options)["group.protocol"] == "classic"


def test_a_member_is_named_by_its_client_id_unless_the_environment_names_it() -> None:
    options = ConsumerOptions("g", client_id="billing-0")
    assert consumer_configuration(SETTINGS, options)["client.id"] == "billing-0"
    assert "client.id" not in consumer_configuration(SETTINGS, ConsumerOptions("g"))
    configured = Settings(kafka_bootstrap_servers="h:1", kafka_config={"client.id": "mine"})
    assert consumer_configuration(configured, options)["client.id"] == "mine"


@pytest.mark.parametrize("brokers", [1, 3])
def test_the_local_brokers_detect_a_dead_member_in_6_seconds(tmp_path: Any, brokers: int) -> None:
    layout = kafka_layout(StackPaths.under(tmp_path), 19092, brokers)
    properties = server_properties(layout, layout.node(1), partitions=4).splitlines()
    assert "group.consumer.session.timeout.ms=6000" in properties
    assert "group.consumer.heartbeat.interval.ms=500" in properties
    assert "transaction.abort.timed.out.transaction.cleanup.interval.ms=1000" in properties


class Group:
    """The static member ids a group lists, one answer per call (the last one repeats)."""

    def __init__(self, *answers: set[str]) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self) -> set[str]:
        self.calls += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def test_a_restarted_static_member_waits_until_its_old_session_is_gone() -> None:
    group = Group({"pod-0", "pod-1"}, {"pod-0", "pod-1"}, {"pod-1"})
    assert wait_for_previous_incarnation("pod-0", group, timeout=60, poll=0)
    assert group.calls == 3


def test_a_member_whose_id_is_free_joins_at_once() -> None:
    group = Group({"pod-1"})
    assert wait_for_previous_incarnation("pod-0", group, timeout=60, poll=0)
    assert group.calls == 1


def test_an_id_held_past_the_deadline_is_reported() -> None:
    assert not wait_for_previous_incarnation("pod-0", Group({"pod-0"}), timeout=0, poll=0)
