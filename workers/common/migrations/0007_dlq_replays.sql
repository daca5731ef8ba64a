-- `workers dlq replay` (docs/operations.md, DLQ inspection and replay): dead-lettered messages
-- re-produced to their original topic, with an audit row per run.
--
-- `dlq_replays`: one row per run that was not a dry run: who ran it ($USER), for which
-- worker and DLQ topic, with which selection, and what became of the messages it selected.
-- `running` until it ends; a run whose process died is marked `interrupted` by the next one
-- (each run holds an advisory lock on its id while it works).
CREATE TABLE dlq_replays (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    worker TEXT NOT NULL,
    dlq_topic TEXT NOT NULL,
    -- {"dlq_topic", "reason", "since", "until"} as given.
    selection JSONB NOT NULL,
    requested_by TEXT NOT NULL,
    state VARCHAR(16) NOT NULL CHECK (state IN ('running', 'done', 'failed', 'interrupted')),
    -- DLQ messages the selection matched; of those, claimed by an earlier run, without the
    -- headers that say where they came from, acknowledged by Kafka, refused by Kafka.
    selected INTEGER NOT NULL DEFAULT 0,
    already_replayed INTEGER NOT NULL DEFAULT 0,
    unreplayable INTEGER NOT NULL DEFAULT 0,
    replayed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ
);
CREATE INDEX dlq_replays_running ON dlq_replays (dlq_topic) WHERE state = 'running';

-- One row per DLQ message a run claimed, inserted (committed) before the message is
-- produced: the primary key makes a message replayable once, whatever runs crash or race.
-- `claimed` until Kafka answers: `produced` (at `produced_offset`) or `failed` (`error`).
-- A row left `claimed` by an interrupted run is never produced again by a later run.
CREATE TABLE dlq_replayed_messages (
    dlq_topic TEXT NOT NULL,
    dlq_partition INTEGER NOT NULL,
    dlq_offset BIGINT NOT NULL,
    replay_id BIGINT NOT NULL REFERENCES dlq_replays (id),
    original_topic TEXT NOT NULL,
    original_partition INTEGER NOT NULL,
    original_offset BIGINT NOT NULL,
    state VARCHAR(16) NOT NULL CHECK (state IN ('claimed', 'produced', 'failed')),
    produced_offset BIGINT,
    error TEXT,
    claimed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);
CREATE INDEX dlq_replayed_messages_replay ON dlq_replayed_messages (replay_id);
