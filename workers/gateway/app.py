"""The gateway's ASGI application (Starlette): chunk upload and the assemble endpoints.

Routes (all under `/api/0/`, bearer-token authenticated):
- `GET  organizations/{org}/chunk-upload/`: the upload options (read, write or release scope);
- `POST organizations/{org}/chunk-upload/`: multipart chunks → Kafka (write or release scope);
- `POST projects/{org}/{project}/files/difs/assemble/`: debug information files;
- `POST organizations/{org}/artifactbundle/assemble/`: source-map artifact bundles.
The assemble endpoints answer at once from the cached or stored state, and enqueue the files
whose chunks are all stored for the assemble worker (workers/gateway/assemble.py).
Errors are JSON: 400 `{"error": ...}` for bad uploads (the exact messages of
docs/reference.md, Upload errors), 401/403
`{"detail": ...}` for authentication and permission, 503 when Kafka, PostgreSQL or Redis
fail (a server fault is never reported as bad input, nor as success).
Every 401/403 is counted by reason and logged with the token's id (docs/gateway.md, Tokens).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, Literal, TypeVar

import msgspec
import psycopg
import redis.exceptions
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workers.gateway.assemble_types import AssembleResult, FileRequest, Target
from workers.gateway.auth import AuthRefused, authorize, log_refusal
from workers.gateway.dif_answer import dif_object
from workers.gateway.multipart import (
    REQUEST_TOO_LARGE,
    ChunkReader,
    UploadRejected,
    boundary_of,
    file_part_encoding,
)
from workers.gateway.options import chunk_upload_options
from workers.gateway.pacing import BodyPace, SlowUpload, paced
from workers.gateway.publisher import PublishError
from workers.gateway.schema import (
    MAX_BODY_BYTES,
    BadRequest,
    Body,
    parse_bundle_request,
    parse_dif_request,
)
from workers.gateway.services import GatewayServices
from workers.gateway.tokens import READ_SCOPES, WRITE_SCOPES, TokenOwner
from workers.gateway.upload_slots import NoUploadSlot, UploadSlots

logger = logging.getLogger(__name__)

T = TypeVar("T")

CHUNK_UPLOAD_ROUTE: Final = "/api/0/organizations/{org}/chunk-upload/"
DIF_ASSEMBLE_ROUTE: Final = "/api/0/projects/{org}/{project}/files/difs/assemble/"
BUNDLE_ASSEMBLE_ROUTE: Final = "/api/0/organizations/{org}/artifactbundle/assemble/"
HEALTH_ROUTE: Final = "/health"
#: Body bytes handed to the multipart reader's worker thread at once.
FEED_BATCH_BYTES: Final = 1024 * 1024


class ApiError(Exception):
    """An answer other than success: status, JSON body, and a reason code for metrics."""

    def __init__(
        self,
        status: int,
        body: dict[str, Any],
        reason: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.body = body
        self.reason = reason
        self.headers = headers


Handler = Callable[[Request, GatewayServices], Awaitable[Response]]


def _unavailable(reason: str) -> ApiError:
    return ApiError(503, {"error": "Service temporarily unavailable, try again"}, reason)


async def _authorize(
    request: Request, services: GatewayServices, organization_slug: str, scopes: frozenset[str]
) -> TokenOwner:
    return await authorize(
        services.pool, request.headers.get("authorization"), organization_slug, scopes
    )


async def _drain(request: Request, budget: int, pace: BodyPace) -> None:
    """Read and drop what is left of the body, up to `budget` bytes and at `pace`, so the
    client (still sending) reads our answer instead of a reset connection."""
    seen = 0
    try:
        async for piece in paced(request.stream(), pace):
            seen += len(piece)
            if seen > budget:
                return
    except Exception:  # noqa: S110 - the client went away or stalled; nothing left to answer
        pass


async def chunk_upload(request: Request, services: GatewayServices) -> Response:
    organization_slug = request.path_params["org"]
    limits = services.config.limits
    if request.method == "GET":
        await _authorize(request, services, organization_slug, READ_SCOPES)
        return JSONResponse(
            chunk_upload_options(
                organization_slug,
                limits,
                urls=services.config.upload_urls,
                user_agent=request.headers.get("user-agent"),
                compression=services.config.upload_compression,
            )
        )
    owner = await _authorize(request, services, organization_slug, WRITE_SCOPES)
    # At most `max_concurrent_uploads` requests buffer chunks at once, a fair share per
    # organization; the others wait (a bounded time) without reading their bodies (TCP
    # backpressure), which bounds the process's memory.
    return await _in_slot(
        services.upload_slots,
        "upload",
        owner,
        lambda: _receive_chunks(request, services, owner),
    )


async def _in_slot(
    slots: UploadSlots,
    kind: Literal["upload", "assemble"],
    owner: TokenOwner,
    answer: Callable[[], Awaitable[Response]],
) -> Response:
    """`answer()` while holding one of the organization's `slots`; no slot within the wait is
    a 503 with `Retry-After`, a stalled body a 408 (docs/gateway.md, Slow and greedy
    clients, and Bounded assemble)."""
    try:
        async with slots.slot(owner.organization_id):
            return await answer()
    except NoUploadSlot as error:
        raise ApiError(
            503,
            {"error": f"Too many {kind}s in progress, try again"},
            f"no_{kind}_slot",
            {"Retry-After": str(error.retry_after_seconds), "Connection": "close"},
        ) from None
    except SlowUpload as error:
        raise ApiError(
            408, {"error": "Request body timed out"}, error.reason, {"Connection": "close"}
        ) from None


async def _receive_chunks(
    request: Request, services: GatewayServices, owner: TokenOwner
) -> Response:
    limits = services.config.limits
    file_part_encoding(request.headers.get("content-encoding"))  # refused before anything
    content_length = request.headers.get("content-length")
    if (
        content_length is not None
        and content_length.isdigit()
        and int(content_length) > limits.max_body_bytes
    ):
        raise UploadRejected(*REQUEST_TOO_LARGE)
    content_type = request.headers.get("content-type")
    pace = services.config.body_pace
    try:
        if not content_type:
            async for piece in paced(request.stream(), pace):
                if piece:
                    boundary_of(content_type)  # raises: a body that is not multipart
            return Response(status_code=200)
        reader = ChunkReader(
            boundary_of(content_type), limits, request.headers.get("content-encoding")
        )
        # Parsing, decoding and hashing run in a worker thread, a batch of pieces at a time:
        # sha1 and zlib release the GIL, so they use the second core while the event loop
        # receives the other uploads.
        batch: list[bytes] = []
        batched = 0
        async for piece in paced(request.stream(), pace):
            batch.append(piece)
            batched += len(piece)
            if batched >= FEED_BATCH_BYTES:
                await asyncio.to_thread(reader.feed_all, batch)
                batch, batched = [], 0
        if batch:
            await asyncio.to_thread(reader.feed_all, batch)
        chunks = reader.finish()
    except UploadRejected:
        await _drain(request, limits.max_body_bytes, pace)
        raise
    if not chunks:
        return Response(status_code=200)
    checksums = [chunk.checksum for chunk in chunks]
    accepted_bytes = sum(chunk.size for chunk in chunks)
    started = time.perf_counter()
    try:
        await services.publisher.publish(owner.organization_id, chunks)
    except PublishError as error:
        logger.warning(
            "chunks not acknowledged by Kafka",
            extra={
                "organization_id": owner.organization_id,
                "chunks": len(checksums),
                "error": str(error),
            },
        )
        raise _unavailable("kafka_unavailable") from None
    services.metrics.produce_latency.observe(time.perf_counter() - started)
    try:
        await services.pending.mark(owner.organization_id, checksums)
    except redis.exceptions.RedisError:
        logger.exception("could not record pending chunks")
        raise _unavailable("redis_unavailable") from None
    services.metrics.chunks_accepted.inc(len(checksums))
    services.metrics.bytes_accepted.inc(accepted_bytes)
    return Response(status_code=200)


async def _json_body(request: Request, pace: BodyPace) -> bytearray:
    """The body, at most `MAX_BODY_BYTES`, read at `pace` (a stalled body answers 408)."""
    content_length = request.headers.get("content-length")
    if (
        content_length is not None
        and content_length.isdigit()
        and int(content_length) > MAX_BODY_BYTES
    ):
        raise await _assemble_body_too_large(request, pace)
    body = bytearray()
    async for piece in paced(request.stream(), pace):
        body += piece
        if len(body) > MAX_BODY_BYTES:
            del body
            raise await _assemble_body_too_large(request, pace)
    return body


async def _assemble_body_too_large(request: Request, pace: BodyPace) -> ApiError:
    # What the client is still sending is read and dropped (up to the limit again), so that
    # it reads the answer; the connection is closed after it.
    await _drain(request, MAX_BODY_BYTES, pace)
    return ApiError(
        400, {"error": "Request too large"}, "assemble_body_too_large", {"Connection": "close"}
    )


def _assemble_entry(result: AssembleResult) -> dict[str, Any]:
    return {
        "state": result.state,
        "missingChunks": list(result.missing_chunks),
        "detail": result.detail,
    }


def _json(answer: Any) -> Response:
    # msgspec: an answer listing every chunk of a maximal request is one buffer, built fast.
    return Response(msgspec.json.encode(answer), media_type="application/json")


async def _project_ids(
    services: GatewayServices, organization_id: int, slugs: tuple[str, ...]
) -> dict[str, int]:
    async with services.pool.connection() as connection:
        cursor = await connection.execute(
            "SELECT lower(slug), id FROM projects WHERE organization_id = %s "
            "AND lower(slug) = ANY(%s)",
            (organization_id, [slug.lower() for slug in slugs]),
        )
        rows = await cursor.fetchall()
    return {str(slug): int(project_id) for slug, project_id in rows}


async def _parsed_body(
    request: Request, services: GatewayServices, parse: Callable[[Body], T]
) -> T:
    """An assemble body read at the upload pace and decoded by `parse` in a thread (the event
    loop keeps serving while a 16 MiB body is decoded); bad input is a 400."""
    body = await _json_body(request, services.config.body_pace)
    try:
        return await asyncio.to_thread(parse, body)
    except BadRequest as error:
        raise ApiError(400, {"error": str(error)}, "bad_assemble_request") from None


async def _answers(
    services: GatewayServices, target: Target, files: list[FileRequest]
) -> list[AssembleResult]:
    """The answer for each file; Kafka not taking the files to enqueue is a 503."""
    try:
        results = await services.assembler.answer_many(target, files)
    except PublishError as error:
        logger.warning(
            "assemble requests not acknowledged by Kafka",
            extra={"organization_id": target.organization_id, "error": str(error)},
        )
        raise _unavailable("kafka_unavailable") from None
    for result in results:
        services.metrics.assembled(target.kind, result.state, enqueued=result.enqueued)
    return results


async def dif_assemble(request: Request, services: GatewayServices) -> Response:
    owner = await _authorize(request, services, request.path_params["org"], WRITE_SCOPES)
    project_slug = request.path_params["project"]
    projects = await _project_ids(services, owner.organization_id, (project_slug,))
    if project_slug.lower() not in projects:
        raise ApiError(404, {"detail": "The requested resource does not exist"}, "unknown_project")
    target = Target(owner.organization_id, "dif", project_id=projects[project_slug.lower()])

    async def answer() -> Response:
        files = await _parsed_body(request, services, parse_dif_request)
        results = await _answers(services, target, files)
        answers: dict[str, Any] = {}
        for file, result in zip(files, results, strict=True):
            entry = _assemble_entry(result)
            if result.file is not None:
                entry["dif"] = dif_object(result.file)
            answers[file.checksum] = entry
        return _json(answers)

    return await _in_slot(services.assemble_slots, "assemble", owner, answer)


async def bundle_assemble(request: Request, services: GatewayServices) -> Response:
    owner = await _authorize(request, services, request.path_params["org"], WRITE_SCOPES)

    async def answer() -> Response:
        bundle = await _parsed_body(request, services, parse_bundle_request)
        found = await _project_ids(services, owner.organization_id, bundle.projects)
        if len(found) != len({slug.lower() for slug in bundle.projects}):
            raise ApiError(400, {"error": "One or more projects are invalid"}, "unknown_project")
        target = Target(
            owner.organization_id,
            "artifact_bundle",
            projects=bundle.projects,
            release=bundle.version,
            dist=bundle.dist,
        )
        (result,) = await _answers(services, target, [bundle.file])
        return _json(_assemble_entry(result))

    return await _in_slot(services.assemble_slots, "assemble", owner, answer)


async def health(request: Request, services: GatewayServices) -> Response:
    return JSONResponse({"status": "ok"})


def _instrumented(template: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        services: GatewayServices = request.app.state.services
        started = time.perf_counter()
        try:
            response = await handler(request, services)
        except UploadRejected as error:
            services.metrics.rejected(error.reason)
            response = JSONResponse({"error": error.message}, status_code=400)
        except AuthRefused as refusal:
            services.metrics.refused(refusal)
            log_refusal(refusal, template, request)
            response = JSONResponse(refusal.body, status_code=refusal.status)
        except ApiError as error:
            services.metrics.rejected(error.reason)
            response = JSONResponse(error.body, status_code=error.status, headers=error.headers)
        except ClientDisconnect:
            # The client went away mid-body: nothing was produced, nobody reads the answer.
            services.metrics.rejected("client_disconnected")
            response = JSONResponse({"error": "Client disconnected"}, status_code=400)
        except (psycopg.Error, redis.exceptions.RedisError) as error:
            services.metrics.rejected("dependency_unavailable")
            logger.warning(
                "a dependency failed",
                extra={"route": template, "error_type": type(error).__name__, "error": str(error)},
            )
            response = JSONResponse(
                {"error": "Service temporarily unavailable, try again"}, status_code=503
            )
        except Exception:
            services.metrics.rejected("internal_error")
            logger.exception("unhandled error", extra={"route": template})
            response = JSONResponse({"error": "Internal server error"}, status_code=500)
        services.metrics.requests.labels(template, request.method, str(response.status_code)).inc()
        services.metrics.request_duration.labels(template, request.method).observe(
            time.perf_counter() - started
        )
        return response

    return endpoint


ServicesFactory = Callable[[], AbstractAsyncContextManager[GatewayServices]]


def create_app(open_services: ServicesFactory) -> Starlette:
    """The app; `open_services` opens the process's resources for the app's lifetime."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_services() as services:
            app.state.services = services
            yield

    routes = [
        Route(
            CHUNK_UPLOAD_ROUTE,
            _instrumented(CHUNK_UPLOAD_ROUTE, chunk_upload),
            methods=["GET", "POST"],
        ),
        Route(
            DIF_ASSEMBLE_ROUTE, _instrumented(DIF_ASSEMBLE_ROUTE, dif_assemble), methods=["POST"]
        ),
        Route(
            BUNDLE_ASSEMBLE_ROUTE,
            _instrumented(BUNDLE_ASSEMBLE_ROUTE, bundle_assemble),
            methods=["POST"],
        ),
        Route(HEALTH_ROUTE, _instrumented(HEALTH_ROUTE, health), methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
