-- Chunk-upload gateway: the lifecycle of an API token (docs/gateway.md, Tokens).
--
-- `expires_at`: the token is refused from this instant on (NULL: it never expires);
-- `revoked_at`: when `workers tokens revoke` refused it for good (NULL: not revoked);
-- `last_used_at`: the last accepted request, kept to within a minute (NULL: never used).
-- Nullable columns without a default: adding them rewrites no row.

ALTER TABLE api_tokens
    ADD COLUMN expires_at TIMESTAMPTZ,
    ADD COLUMN revoked_at TIMESTAMPTZ,
    ADD COLUMN last_used_at TIMESTAMPTZ;
