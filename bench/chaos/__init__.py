"""The chaos suite: the fleet's workers on live streams, one fault at a time (docs/chaos.md).

Modules: `stack` (a stack of its own on free ports), `brokers` (broker faults' handle),
`streams` (the live streams), `billing` / `blob` / `assemble` (the workloads and their
verdicts), `faults`, `lag` (sampling and recovery), `processes` (supervised workers),
`scenario` (one fault, start to verdict), `summary` (table, chart, JSON).
"""
