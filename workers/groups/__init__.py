"""Consumer groups for the operator: `workers groups describe | reset-offsets`
(docs/operations.md, Consumer groups)."""
