"""Helpers the tests and the benchmarks share: unique Kafka names and topics, a gateway
subprocess, waiting with a deadline.

Neither `tests` nor `bench` imports the other: what both need lives here. It is dev tooling,
not part of the `workers` package (not installed, not in the image). `harness.image` builds
that image here (`./dev.sh image`) for the developers and for tests/integration/test_image.py.
"""
