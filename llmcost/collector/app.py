"""The collector's HTTP routes (Starlette). Every answer is JSON (or OTLP/Prometheus), never HTML."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic_core
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from llmcost.collector import litellm, otlp
from llmcost.collector.admission import Admission, Refusal, identity_from_headers
from llmcost.collector.auth import AuthError, Grant, ServiceKeys
from llmcost.collector.intake import (
    BadBody,
    Checked,
    DurableWriter,
    NotDurable,
    check_plain_body,
    check_records,
    journal_lines,
    parse_body,
)
from llmcost.collector.metrics import CONTENT_TYPE, BatchSpend, Metrics
from llmcost.config import Settings, load_settings
from llmcost.sdk.tracker import Tracker

log = logging.getLogger("llmcost")

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_BODY_ENV = "LLMCOST_COLLECTOR_MAX_BODY_BYTES"
KEYS_FILE_ENV = "LLMCOST_COLLECTOR_KEYS_FILE"


class TooLarge(Exception):
    pass


def _accepted(result: dict[str, Any]) -> Response:
    """A 202 with the batch's outcome (pydantic's encoder: the bytes json.dumps writes, in a fraction of the time)."""
    return Response(pydantic_core.to_json(result), status_code=202, media_type="application/json")


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


ANSWERED_FAILURES = (AuthError, TooLarge, BadBody, Refusal, NotDurable)


def failure_response(c: Collector, error: Exception) -> Response:
    """The JSON answer to each known failure of a request (every route, the plain ASGI one too)."""
    if isinstance(error, AuthError):
        return _error(401, str(error))
    if isinstance(error, TooLarge):
        return _error(413, f"request body larger than {c.max_body_bytes} bytes: send smaller batches")
    if isinstance(error, BadBody):
        return _error(400, str(error))
    if isinstance(error, Refusal):
        body = dict(error.body)
        return _error(error.status, body.pop("error"), reason=error.reason, **body)
    log.critical("llmcost collector: %s", error)  # NotDurable: nothing was acknowledged
    return _error(503, str(error))


@dataclass(frozen=True, slots=True)
class Ready:
    """A checked batch ready to commit: its journal lines, its counts and the answer's rejections."""

    endpoint: str
    lines: bytes
    accepted: int
    rejected: list[dict[str, Any]]
    unattributed: int
    spend: BatchSpend


class Collector:
    """The state one collector process shares between requests."""

    def __init__(self, settings: Settings, keys: ServiceKeys, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        # The tracker's own records (reserve/settle) are fsynced before the answer, like the batches.
        self.tracker = Tracker(dataclasses.replace(settings, fsync=True), source="collector")
        self.settings = self.tracker.settings
        self.keys = keys
        self.max_body_bytes = max_body_bytes
        self.metrics = Metrics(self.tracker.pricer, self.settings.tz)
        self.writer = DurableWriter(settings.journal_dir, settings.fallback_log, self.metrics.journal_syncs.inc)
        self.admission = Admission(self.tracker)

    def grant(self, request: Request) -> Grant:
        return self.keys.check(request.headers.get("authorization"))

    async def body(self, request: Request) -> bytes:
        return await self.read_body(request.headers.get("content-length"), request.headers.get("content-encoding"),
                                    request.receive)

    async def read_body(self, declared: str | None, encoding: str | None, receive: Receive) -> bytes:
        """The body within the size limit (413 otherwise), gunzipped when so encoded; one rule for every route.
        Read straight from the ASGI messages: no async generator per request (each costs the loop's hooks)."""
        if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise TooLarge()
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body")
            if chunk:
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise TooLarge()
                parts.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        encoding = (encoding or "identity").strip().lower()
        if encoding == "gzip":  # OTLP exporters often compress
            return self._gunzip(body)
        if encoding != "identity":
            raise BadBody(f"unsupported Content-Encoding {encoding[:40]!r}: send gzip or no encoding")
        return body

    def _gunzip(self, body: bytes) -> bytes:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            data = inflater.decompress(body, self.max_body_bytes + 1)
        except zlib.error as error:
            raise BadBody(f"the body is not valid gzip ({error})") from None
        if len(data) > self.max_body_bytes or inflater.unconsumed_tail:
            raise TooLarge()
        return data

    async def accept(self, endpoint: str, records: list[Any], grant: Grant) -> dict[str, Any]:
        """Validate, make durable, count; the 202 body. Raises Refusal (403) or NotDurable (nothing acknowledged)."""
        return await self.commit(self.ready(endpoint, check_records(records, grant, source=f"collector:{endpoint}")))

    def ready(self, endpoint: str, checked: Checked) -> Ready:
        """What a checked batch leaves to commit: its journal lines, its counts and its answer (the records are
        not kept while the fsync runs). Raises Refusal (403) when every record names another tenant."""
        if checked.refused_tenant and checked.refused_tenant == len(checked.accepted) + len(checked.rejected):
            self.metrics.count(endpoint, 0, len(checked.rejected), 0)
            raise Refusal(403, "tenant_not_allowed", {
                "error": "every record names a tenant this service key is not allowed to send for",
                "rejected": checked.rejected})
        return Ready(endpoint, journal_lines(checked), len(checked.accepted), checked.rejected,
                     checked.unattributed, BatchSpend(checked.events))

    async def commit(self, batch: Ready) -> dict[str, Any]:
        """Make a batch durable, then count it; the 202 body. Raises NotDurable (nothing acknowledged)."""
        started = time.perf_counter()
        where = await self.writer.write_lines(batch.lines)
        self.metrics.journal_seconds.observe(time.perf_counter() - started)
        if where == "fallback":
            log.error("llmcost collector: journal failed, %d records kept in the fallback log", batch.accepted)
        self.metrics.count(batch.endpoint, batch.accepted, len(batch.rejected), batch.unattributed)
        self.metrics.spend.add(batch.spend)
        return {"accepted": batch.accepted, "rejected": batch.rejected}

    def usage_batch(self, body: bytes, content_type: str | None, grant: Grant) -> Ready:
        """POST /v1/usage: the usual body judged straight from its bytes, any other record by record."""
        checked = check_plain_body(body, content_type, grant, source="collector:usage")
        if checked is None:
            checked = check_records(parse_body(body, content_type), grant, source="collector:usage")
        return self.ready("usage", checked)

    def close(self) -> None:
        self.admission.close()
        self.writer.close()
        self.tracker.close()


def _routes(c: Collector) -> list[Route]:
    def guarded(handler):
        """The endpoint: the service key checked first, then each known failure as a JSON answer."""
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request, c.grant(request))
            except ANSWERED_FAILURES as error:
                return failure_response(c, error)
        return endpoint

    async def usage(request: Request, grant: Grant) -> Response:
        return _accepted(await c.commit(c.usage_batch(await c.body(request), request.headers.get("content-type"), grant)))

    async def litellm_payloads(request: Request, grant: Grant) -> Response:
        payloads = parse_body(await c.body(request), request.headers.get("content-type"))
        return _accepted(await c.accept("litellm", litellm.payloads_to_records(payloads), grant))

    async def traces(request: Request, grant: Grant) -> Response:
        content_type = request.headers.get("content-type")
        spans = otlp.spans_to_records(otlp.decode_request(await c.body(request), content_type))
        if spans.ignored:
            c.metrics.ignored_spans.inc(spans.ignored)
        result = await c.accept("traces", spans.records, grant)
        message = "; ".join(f"span {r['index']}: {r['error']}" for r in result["rejected"])[:2000]
        body, media_type = otlp.encode_response(len(result["rejected"]), message, content_type)
        return Response(body, status_code=200, media_type=media_type)

    async def reserve(request: Request, grant: Grant) -> Response:
        identity = identity_from_headers(request.headers)
        if grant.tenant_id is not None and identity["tenant_id"] != grant.tenant_id:
            raise Refusal(403, "tenant_not_allowed", {
                "error": f"tenant {identity['tenant_id']!r} is not allowed for this service key"})
        body = _json_object(await c.body(request))
        return JSONResponse(await _admit(c, "reserve", c.admission.reserve, identity, body, grant.key))

    async def settle(request: Request, grant: Grant) -> Response:
        body = _json_object(await c.body(request))
        return JSONResponse(await _admit(c, "settle", c.admission.settle, body, grant.tenant_id))

    async def metrics(request: Request, grant: Grant) -> Response:
        return Response(c.metrics.render(), media_type=CONTENT_TYPE)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "journal_dir": str(c.settings.journal_dir), "pid": os.getpid()})

    return [
        Route("/v1/usage", guarded(usage), methods=["POST"]),
        Route("/v1/litellm", guarded(litellm_payloads), methods=["POST"]),
        Route("/v1/traces", guarded(traces), methods=["POST"]),
        Route("/v1/reserve", guarded(reserve), methods=["POST"]),
        Route("/v1/settle", guarded(settle), methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", guarded(metrics), methods=["GET"]),
    ]


async def _admit(c: Collector, action: str, step, *args) -> dict[str, Any]:
    """Run a reserve or settle off the event loop (SQLite and fsync), counting its outcome."""
    try:
        answer = await run_in_threadpool(step, *args)
    except Refusal as refusal:
        c.metrics.admissions.labels(action, refusal.reason).inc()
        raise
    c.metrics.admissions.labels(action, "allowed" if action == "reserve" else "settled").inc()
    return answer


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = pydantic_core.from_json(body, allow_inf_nan=False)
    except ValueError as error:
        raise BadBody(f"the request body is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise BadBody(f"the request body must be a JSON object, not {type(value).__name__}")
    return value


class CollectorApp(Starlette):
    """Starlette, with POST /v1/usage (nearly every request a collector gets) answered by a plain ASGI handler
    ahead of the router: no Request object, route matching or middleware for it. The service key, the size
    limit, the body's encoding, the records' rules and the failure answers are the functions the other routes
    call; every other request (another method or path included) goes to the router as before."""

    collector: Collector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/usage" and scope["method"] == "POST":
            await self._usage(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def _usage(self, scope: Scope, receive: Receive, send: Send) -> None:
        c, headers = self.collector, _first_headers(scope)
        try:
            grant = c.keys.check(headers.get(b"authorization"))
            body = await c.read_body(headers.get(b"content-length"), headers.get(b"content-encoding"), receive)
            batch = c.usage_batch(body, headers.get(b"content-type"), grant)
            del body  # only the batch's lines wait for the fsync
            reply = pydantic_core.to_json(await c.commit(batch))
        except ANSWERED_FAILURES as error:
            await failure_response(c, error)(scope, receive, send)
            return
        except ClientDisconnect:
            return  # nobody to answer; whatever was not read was not acknowledged
        await send({"type": "http.response.start", "status": 202, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(reply)).encode())]})
        await send({"type": "http.response.body", "body": reply})


def _first_headers(scope: Scope) -> dict[bytes, str]:
    """Each header's first value, as Starlette's `Headers.get` gives it."""
    headers: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name not in headers:
            headers[name] = value.decode("latin-1")
    return headers


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return _error(exc.status_code, exc.detail)


def create_app(settings: Settings | None = None, keys: ServiceKeys | None = None,
               max_body_bytes: int | None = None) -> CollectorApp:
    """The collector app; settings, keys and the body limit default to the environment's."""
    settings = settings or load_settings()
    if keys is None:
        keys_file = os.environ.get(KEYS_FILE_ENV)
        keys = ServiceKeys.load(Path(keys_file) if keys_file else None)
    if max_body_bytes is None:
        max_body_bytes = int(os.environ.get(MAX_BODY_ENV) or DEFAULT_MAX_BODY_BYTES)
    settings.ensure_dirs(strict=False)
    collector = Collector(settings, keys, max_body_bytes)
    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            collector.close()

    app = CollectorApp(routes=_routes(collector), exception_handlers={HTTPException: _http_error}, lifespan=lifespan)
    app.collector = app.state.collector = collector
    return app
