"""The local stack's Kafka layout: how many brokers it runs, their ports, its bootstrap list.

A contract between the settings (the default `KAFKA_BOOTSTRAP_SERVERS` names every broker
of the local stack) and `workers stack`, which starts them (docs/operations.md, Local stack).

`workers stack up --brokers N` records N in `<state dir>/kafka/brokers`; without the file
the stack runs one broker, as it always did. Node `i` (1-based) listens on
`base + 2 (i - 1)` for clients and on the port after it for its controller: with the
default base 19092 that is 19092/19093 for the single broker and node 1, 19094/19095 and
19096/19097 for nodes 2 and 3 (PostgreSQL 15432 and Redis 16379 are far away).
"""

from __future__ import annotations

from pathlib import Path

# The layouts `workers stack up --brokers` accepts (docs/operations.md, A 3-broker cluster).
BROKER_COUNTS: tuple[int, ...] = (1, 3)
DEFAULT_BROKERS = 1
_HOST = "127.0.0.1"


class LayoutError(ValueError):
    """The recorded broker count is not one the stack can run; the message says what to do."""


def brokers_file(state_dir: Path) -> Path:
    return state_dir / "kafka" / "brokers"


def recorded_brokers(state_dir: Path) -> int:
    """The broker count `workers stack up --brokers` recorded, 1 when none was."""
    path = brokers_file(state_dir)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return DEFAULT_BROKERS
    if text.isdigit() and int(text) in BROKER_COUNTS:
        return int(text)
    raise LayoutError(
        f"{path} holds {text!r}, not one of {', '.join(map(str, BROKER_COUNTS))}; "
        "fix it with `workers stack up --brokers N`"
    )


def record_brokers(state_dir: Path, brokers: int) -> None:
    check_brokers(brokers)
    path = brokers_file(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(f"{brokers}\n")
    temporary.replace(path)


def check_brokers(brokers: int) -> None:
    if brokers not in BROKER_COUNTS:
        raise LayoutError(
            f"the local stack runs {' or '.join(map(str, BROKER_COUNTS))} Kafka brokers, "
            f"not {brokers}"
        )


def broker_port(base_port: int, node_id: int) -> int:
    return base_port + 2 * (node_id - 1)


def controller_port(base_port: int, node_id: int) -> int:
    return broker_port(base_port, node_id) + 1


def local_bootstrap_servers(base_port: int, brokers: int) -> str:
    """`127.0.0.1:19092,127.0.0.1:19094,...`: every broker of a local layout."""
    return ",".join(
        f"{_HOST}:{broker_port(base_port, node_id)}" for node_id in range(1, brokers + 1)
    )
