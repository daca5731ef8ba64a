"""Dead-letter queues for the operator: `workers dlq list | show | replay`
(docs/operations.md, DLQ inspection and replay)."""
