"""Assembled files and their assemble tasks: `workers files list | show`
(docs/blob-lifecycle.md, Files commands)."""
