"""The chunk-upload gateway: Sentry's chunk-upload and assemble endpoints over HTTP.

What it answers: docs/gateway.md; the exact formats: docs/reference.md, Upload options.

- `options`: the limits and the options document of `GET .../chunk-upload/`;
- `multipart`: streaming `multipart/form-data` → verified chunks, bounded memory;
- `publisher`: chunks → `chunk-uploads` events and files → `assemble-requests`, awaited
  until Kafka acknowledged them;
- `tokens`: bearer tokens per organization (sha256 in PostgreSQL), scopes, expiry,
  revocation, last use;
- `auth`: bearer token → owner, or a 401/403 with a fixed reason code (counted, logged);
- `pending`: chunks accepted but not yet persisted by blob-ingest (Redis, with a TTL);
- `assemble`: the assemble answers, at once: the status cache (`assemble_status`), the
  stored tasks and files (`assemble_store`), missing chunks by blob ownership, and the
  files enqueued for the assemble worker; `dif_answer`: the `dif` object of an `ok`;
- `metrics`: Prometheus series; `app`: the ASGI routes; `cli`: `workers serve gateway`,
  `workers tokens create / list / revoke`.
"""
