-- The orphan sweep asks "does any row reference this storage path?" for every object.
CREATE INDEX blobs_path ON blobs (path);
