"""A real S3-compatible HTTP server on 127.0.0.1 for tests: moto's server mode.

    with LocalS3Server() as server:          # or server.start() / server.stop()
        bucket = server.create_bucket()
        storage = S3BlobStorage(bucket, options=server.options())

The server runs in a thread of the test process on a port the OS picks (no port race) and
speaks real HTTP; boto3 talks to it exactly as to any S3 endpoint. `stop()` also closes the
listening socket, so a client afterwards gets "connection refused", as from a dead server.
"""

from __future__ import annotations

import logging
import socket
import uuid
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from moto.server import ThreadedMotoServer

from harness.waiting import wait_for
from workers.common.storage.s3 import S3Options, make_s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ACCESS_KEY_ID = "test-access-key"
SECRET_ACCESS_KEY = "test-secret-key"
REGION = "us-east-1"
HOST = "127.0.0.1"


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


class LocalS3Server:
    """moto's S3 server on 127.0.0.1 and a free port; start, use, stop."""

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
        self._port: int | None = None
        self._client: S3Client | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the S3 server is not started")
        return self._port

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        # Werkzeug logs one line per request on stderr; only its warnings are of interest.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server.start()
        self._port = self._server.get_host_and_port()[1]
        port = self._port
        wait_for(lambda: _accepts_connections(port), timeout, f"the S3 server on port {port}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and close the listening socket (later connections are refused)."""
        if self._port is None:
            return
        port = self._port
        if self._client is not None:
            self._client.close()
            self._client = None
        self._server.stop()
        listener = self._server._server
        if listener is not None:
            listener.server_close()
        wait_for(
            lambda: not _accepts_connections(port), timeout, f"port {port} to refuse connections"
        )

    def options(self, **overrides: Any) -> S3Options:
        """S3 options for this server (path-style addressing, its fake credentials)."""
        settings: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "region": REGION,
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": SECRET_ACCESS_KEY,
            "addressing_style": "path",
        }
        settings.update(overrides)
        return S3Options(**settings)

    def client(self) -> S3Client:
        """A plain boto3 client for this server (one, reused), to look behind the storage."""
        if self._client is None:
            self._client = make_s3_client(self.options())
        return self._client

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name by default) and return its name."""
        bucket = name or f"test-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
