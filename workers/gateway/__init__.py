"""The chunk-upload gateway: Sentry's chunk-upload and assemble endpoints over HTTP.

What it answers: docs/gateway.md; the exact formats: docs/reference.md, Upload options.

- `options`: the limits and the options document of `GET .../chunk-upload/`;
- `multipart`: streaming `multipart/form-data` → verified chunks, bounded memory;
- `publisher`: chunks → `chunk-uploads` events, awaited until Kafka acknowledged them;
- `tokens`: bearer tokens per organization (sha256 in PostgreSQL), scopes, expiry,
  revocation, last use;
- `auth`: bearer token → owner, or a 401/403 with a fixed reason code (counted, logged);
- `pending`: chunks accepted but not yet persisted by blob-ingest (Redis, with a TTL);
- `assemble`: missing chunks by blob ownership, whole-file verification, `assembled_files`;
- `metrics`: Prometheus series; `app`: the ASGI routes; `cli`: `workers serve gateway`,
  `workers tokens create / list / revoke`.
"""
