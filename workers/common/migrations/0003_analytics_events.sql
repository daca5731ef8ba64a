-- Analytics events recorded by the workers (SPEC §4: `first_custom_metric.sent`).
--
-- The billing worker inserts `first_custom_metric.sent` in the same transaction as the
-- conditional flag update (`flags = flags | 65536 ... WHERE flags & 65536 = 0`), so only the
-- transaction that actually flips the bit records it. The partial unique index is the second
-- guard: one such event per project, ever (`ON CONFLICT DO NOTHING`).

CREATE TABLE analytics_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_type VARCHAR(64) NOT NULL,
    organization_id BIGINT NOT NULL,
    project_id BIGINT NOT NULL,
    platform VARCHAR(64),
    user_id BIGINT,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX analytics_events_first_custom_metric_unique
    ON analytics_events (project_id)
    WHERE event_type = 'first_custom_metric.sent';
CREATE INDEX analytics_events_recorded_at ON analytics_events (recorded_at);
