-- The assemble worker (docs/assemble.md): the durable state of each assemble, and what an
-- assembled file turned out to hold (debug information files, artifact bundles).
--
-- `assemble_tasks`: one row per file an organization asked to assemble (per kind, and per
-- project for debug files), with its state `created → assembling → ok | error`. The gateway
-- inserts it as `created` and enqueues the request; the worker moves it on. `detail` says
-- why a file is in `error`; `attempts` counts the worker's starts (a crash mid-assembly
-- leaves `assembling`, and the restarted worker starts again from the chunks).
CREATE TABLE assemble_tasks (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id BIGINT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    project_id BIGINT REFERENCES projects (id) ON DELETE CASCADE,
    kind VARCHAR(32) NOT NULL CHECK (kind IN ('dif', 'artifact_bundle')),
    -- sha1 of the whole file, as claimed by the client.
    checksum CHAR(40) NOT NULL,
    name TEXT NOT NULL,
    -- sha1 of each consecutive chunk, in order.
    chunks CHAR(40)[] NOT NULL,
    debug_id TEXT,
    projects TEXT[] NOT NULL DEFAULT '{}',
    release TEXT,
    dist TEXT,
    state VARCHAR(16) NOT NULL CHECK (state IN ('created', 'assembling', 'ok', 'error')),
    detail TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    assembled_file_id BIGINT REFERENCES assembled_files (id) ON DELETE SET NULL,
    date_added TIMESTAMPTZ NOT NULL DEFAULT now(),
    date_updated TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX assemble_tasks_unique
    ON assemble_tasks (organization_id, kind, coalesce(project_id, 0), checksum);
CREATE INDEX assemble_tasks_unfinished
    ON assemble_tasks (date_updated) WHERE state IN ('created', 'assembling');

-- The objects of a debug information file, one row per object (a fat Mach-O has several),
-- as symbolic detects them: upstream's ProjectDebugFile.
CREATE TABLE debug_files (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    assembled_file_id BIGINT NOT NULL REFERENCES assembled_files (id) ON DELETE CASCADE,
    project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    debug_id TEXT NOT NULL,
    code_id TEXT,
    cpu_name TEXT NOT NULL,
    object_name TEXT NOT NULL,
    -- elf, macho, pe, pdb, sourcebundle, wasm, breakpad, portablepdb...
    file_format VARCHAR(32) NOT NULL,
    -- exe, dbg, lib, ... (symbolic's ObjectKind)
    object_kind VARCHAR(32) NOT NULL,
    -- symtab, debug, unwind, sources (symbolic's features), sorted.
    features TEXT[] NOT NULL,
    date_added TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX debug_files_object ON debug_files (assembled_file_id, debug_id, cpu_name);
CREATE INDEX debug_files_project_debug_id ON debug_files (project_id, debug_id);

-- Artifact bundles (`sentry-cli sourcemaps upload`): upstream's ArtifactBundle,
-- ProjectArtifactBundle, ReleaseArtifactBundle, DebugIdArtifactBundle, ArtifactBundleIndex.
CREATE TABLE artifact_bundles (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id BIGINT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    assembled_file_id BIGINT NOT NULL REFERENCES assembled_files (id) ON DELETE CASCADE,
    -- The manifest's `debug_id` when it has one, else a random one (as upstream).
    bundle_id UUID NOT NULL,
    artifact_count INTEGER NOT NULL CHECK (artifact_count >= 0),
    date_added TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT artifact_bundles_file_unique UNIQUE (assembled_file_id)
);
CREATE INDEX artifact_bundles_organization ON artifact_bundles (organization_id, bundle_id);

CREATE TABLE project_artifact_bundles (
    artifact_bundle_id BIGINT NOT NULL REFERENCES artifact_bundles (id) ON DELETE CASCADE,
    project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    PRIMARY KEY (artifact_bundle_id, project_id)
);

CREATE TABLE release_artifact_bundles (
    artifact_bundle_id BIGINT NOT NULL REFERENCES artifact_bundles (id) ON DELETE CASCADE,
    release_name TEXT NOT NULL,
    -- '' when the upload named no dist (upstream's NULL_STRING).
    dist_name TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (artifact_bundle_id, release_name, dist_name)
);
CREATE INDEX release_artifact_bundles_release ON release_artifact_bundles (release_name, dist_name);

CREATE TABLE debug_id_artifact_bundles (
    artifact_bundle_id BIGINT NOT NULL REFERENCES artifact_bundles (id) ON DELETE CASCADE,
    debug_id UUID NOT NULL,
    -- minified_source, source_map, indexed_ram_bundle (upstream's SourceFileType).
    source_file_type VARCHAR(32) NOT NULL,
    PRIMARY KEY (artifact_bundle_id, debug_id, source_file_type)
);
CREATE INDEX debug_id_artifact_bundles_debug_id ON debug_id_artifact_bundles (debug_id);

CREATE TABLE artifact_bundle_index (
    artifact_bundle_id BIGINT NOT NULL REFERENCES artifact_bundles (id) ON DELETE CASCADE,
    -- The file's path in the zip (`files/_/_/main.js`).
    path TEXT NOT NULL,
    url TEXT NOT NULL,
    -- minified_source, source_map, ... as the manifest says.
    file_type VARCHAR(32) NOT NULL,
    debug_id UUID,
    size BIGINT NOT NULL CHECK (size >= 0),
    PRIMARY KEY (artifact_bundle_id, path)
);
CREATE INDEX artifact_bundle_index_url ON artifact_bundle_index (url);

-- Blob lifecycle (docs/assemble.md, Blob lifecycle): the sweep asks which blobs no assembled
-- file references; this finds the files that reference a chunk.
CREATE INDEX assembled_files_chunks ON assembled_files USING gin (chunks);
