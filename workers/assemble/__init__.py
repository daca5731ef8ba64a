"""The assemble worker: files assembled from stored chunks, checked and indexed
(docs/assemble.md)."""
