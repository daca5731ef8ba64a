-- Chunk-upload gateway: API tokens per organization and the files assembled from chunks.
--
-- Tokens are stored as the sha256 hex of the secret (the secret is printed once, never kept);
-- `token_prefix` is the first characters, shown to tell tokens apart.

CREATE TABLE api_tokens (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id BIGINT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    token_hash CHAR(64) NOT NULL,
    token_prefix VARCHAR(16) NOT NULL,
    name VARCHAR(128),
    scopes TEXT[] NOT NULL,
    date_added TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT api_tokens_hash_unique UNIQUE (token_hash)
);
CREATE INDEX api_tokens_organization ON api_tokens (organization_id);

-- One row per file assembled from blobs: debug information files (kind `dif`, per project)
-- and artifact bundles (kind `artifact_bundle`, per organization with a list of projects).
CREATE TABLE assembled_files (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id BIGINT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    project_id BIGINT REFERENCES projects (id) ON DELETE CASCADE,
    kind VARCHAR(32) NOT NULL,
    name TEXT NOT NULL,
    -- sha1 of the whole file.
    checksum CHAR(40) NOT NULL,
    -- sha1 of each consecutive chunk, in order.
    chunks CHAR(40)[] NOT NULL,
    size BIGINT NOT NULL CHECK (size >= 0),
    debug_id TEXT,
    cpu_name TEXT,
    projects TEXT[] NOT NULL DEFAULT '{}',
    release TEXT,
    dist TEXT,
    date_added TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX assembled_files_unique
    ON assembled_files (organization_id, kind, coalesce(project_id, 0), checksum);
