"""Assemble worker end to end: a 512 MiB artifact bundle whose chunks are already stored,
from its produced request to its task `ok`, next to its ceiling, reading the same stored
chunks and hashing them, nothing else.

The bundle (harness/assemble.py, `artifact_bundle`) is a zip stored uncompressed, as
`sentry-cli sourcemaps upload` sends it: a manifest and one minified source of random hex
text with a debug id, 65 chunks (64 of 8 MiB). Its chunks are stored once, before any clock
starts, in a filesystem blob store under the stack's directory, as blob-ingest stores them
(blob rows, owners).

- `assemble`: one `workers run assemble` subprocess on a fresh topic (1 partition), warmed
  up (a request for a finished task answered) before the clock; the clock runs from the
  produced request to the task's row in `ok` (polled every 5 ms). What it did: claim, read
  the chunks back from storage in order and sha1 them (a bundle is never written to a
  scratch file), open the bundle through its stored chunks and read its directory and
  manifest (two chunk fetches), record the file and the bundle's index in one transaction,
  write the status cache. Between repeats the file's rows are deleted and its task made
  anew;
- `ceiling`: in this process, `storage.get` of each chunk in order and one sha1 over them.

Both read the chunks from the page cache (they were just written, and every run reads them).
In each repeat the ceiling runs first and the assemble right after; the table shows medians,
the ratio is the median assemble rate over the median ceiling rate, against issue 15's
target (>= 0.7). MB/s are 10**6 bytes of the file per second.
"""
