"""How many copies of each partition a topic keeps, from the size of the cluster.

One rule for the fleet's topics (`workers topics create`) and for the internal topics of
the local stack's brokers (offsets, transactions, share-group state): up to three
replicas, and two of them in sync before an `acks=all` write succeeds once there are
three, so one broker can fail or restart without losing or refusing writes
(docs/operations.md, A 3-broker cluster).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_REPLICATION_FACTOR = 3


@dataclass(frozen=True)
class Replication:
    factor: int
    min_insync_replicas: int


def replication_for(brokers: int, factor: int | None = None) -> Replication:
    """RF = min(3, brokers) unless `factor` is given; min.insync.replicas 2 from RF 3 on."""
    if factor is None:
        factor = min(MAX_REPLICATION_FACTOR, max(brokers, 1))
    if factor < 1:
        raise ValueError(f"replication factor must be at least 1, got {factor}")
    return Replication(factor, 2 if factor >= MAX_REPLICATION_FACTOR else 1)
