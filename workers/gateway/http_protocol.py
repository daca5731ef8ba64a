"""uvicorn's HTTP/1.1 protocol with a header read timeout (docs/gateway.md, Slow and greedy
clients).

uvicorn times out idle keep-alive connections, but a connection that sends part of its
request headers and then stalls is kept open for ever, so enough of them exhaust the
server's connections (slowloris). Here a request's headers must be complete within
`header_timeout` seconds of the connection opening (or, on a kept-alive connection, of the
first byte of the next request), or the connection is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def header_timeout_protocol(
    header_timeout: float, on_header_timeout: Callable[[], None] = lambda: None
) -> type[HeaderTimeoutProtocol]:
    """The protocol class for uvicorn's `http=` (uvicorn builds one per connection)."""
    return type(
        "ConfiguredHeaderTimeoutProtocol",
        (HeaderTimeoutProtocol,),
        {"header_timeout": header_timeout, "on_header_timeout": staticmethod(on_header_timeout)},
    )


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (a C parser: about 15 % more upload throughput than h11's
    pure-Python one, docs/benchmarks.md) with the header timeout."""

    header_timeout: float = 10.0

    @staticmethod
    def on_header_timeout() -> None:
        """Called before a connection is closed for its headers' timeout (metrics)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.__timer: asyncio.TimerHandle | None = None
        #: A request's headers are awaited: from the connection's start, or from the first
        #: byte of a request, until its headers are complete.
        self.__awaiting_headers = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.__watch_headers()

    def on_message_begin(self) -> None:
        self.__awaiting_headers = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self.__awaiting_headers = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.__watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self.__disarm()
        super().connection_lost(exc)

    def __watch_headers(self) -> None:
        """Armed while the headers of a request that has begun (or a new connection) are not
        complete yet; an idle kept-alive connection is uvicorn's keep-alive timeout's."""
        idle_keep_alive = self.timeout_keep_alive_task is not None
        waiting = (
            self.__awaiting_headers and not idle_keep_alive and not self.transport.is_closing()
        )
        if waiting and self.__timer is None:
            self.__timer = self.loop.call_later(self.header_timeout, self.__expired)
        elif not waiting:
            self.__disarm()

    def __disarm(self) -> None:
        if self.__timer is not None:
            self.__timer.cancel()
            self.__timer = None

    def __expired(self) -> None:
        self.__timer = None
        if self.__awaiting_headers and not self.transport.is_closing():
            self.on_header_timeout()
            self.transport.close()
