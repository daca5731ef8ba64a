"""Chunk-upload gateway end to end: 8 concurrent uploaders → real gateway → real Kafka, next
to its ceiling, a plain confluent-kafka producer sending the same chunks.

Shapes: 64 KiB chunks, 64 per request (4 MiB requests) and 1 MiB chunks, 32 per request (32
MiB requests), both raw random bytes in `file` parts; and 1 MiB chunks of hex text sent
gzip-compressed in `file_gzip` parts (about 2:1), as sentry-cli sends them. Each shape's
chunks and request bodies are built once, before any clock starts (random content, so
nothing deduplicates), and both variants send those same bytes:

- `gateway`: a fresh `workers serve gateway` subprocess on a fresh topic (4 partitions) with
  a fresh organization and token, and 8 uploader threads (one `httpx.Client` each,
  keep-alive) POSTing the multipart requests as fast as the gateway answers; the clock runs
  from the release of the uploaders to the last 200. A 200 means every chunk of the request
  was acknowledged by Kafka (`acks=all`, idempotent producer), so the rate is acknowledged
  chunks per second. The run is checked afterwards: every answer was 200, the gateway's
  `workers_gateway_chunks_accepted_total` equals the chunks sent, and the topic's high
  watermarks grew by exactly that many messages (`upload`);
- `ceiling`: one plain confluent-kafka producer built by the gateway's own
  `gateway_producer` (so the settings cannot drift), producing every chunk as the gateway
  would (value as sent, sha1 key, chunk-upload headers) to a fresh topic of 4 partitions,
  then flushing; checked the same way (`ceiling`).

In each repeat every shape runs its gateway and its ceiling back to back (alternating which
goes first from one repeat to the next), so the two saw the same machine. After the tables:
the gateway's rate over the ceiling's per shape, against issue 14's target (>= 0.5 for 1 MiB
chunks, raw and gzip): `value` is the ratio of the medians, `paired` (with `--repeat` > 1)
the median of the per-repeat ratios; both must reach the target (`summary`). With several
repeats the gateway's table shows each shape's median run.

Peak RSS: `VmHWM` of the gateway process (its high-water mark since exec; one gateway per
run, so one run's peak never includes another's), next to its RSS before the run. MB/s are
10**6 bytes of decompressed chunk data per second for both variants (the ceiling's `Kafka
MB/s` counts the values as stored, about half for gzip); RSS is in MiB. The client and the
server share the machine's 2 cores, so the gateway's figures are a floor of what it does on
its own; the ceiling's producer runs in this process, with nothing else running.

`--profile DIR` records every gateway run with py-spy (`--py-spy PATH`, default `py-spy` on
PATH) into `DIR/<shape>-<repeat>.txt`, collapsed stacks with native frames, every thread,
idle samples left out.

Prints the tables and, as the last line, one JSON object with the figures. The topics and the
organizations (with their tokens) are removed afterwards. Usage: `python -m bench.gateway
[--requests-64k N] [--requests-1m N] [--uploaders 8] [--repeat N] [--profile DIR]` (needs
`workers stack up` and `workers migrate`).

The modules: `shapes` (the shapes and their chunks and bodies), `upload` (the gateway
variant), `ceiling` (the plain producer), `summary` (ratios, verdicts and tables).
"""
