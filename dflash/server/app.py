"""The HTTP endpoints: OpenAI's chat and text completions (whole or streamed as server-sent
events), the models, health and metrics. Handlers parse, check and tokenize a request in a thread
of their own, submit a job to the scheduler and turn its deltas into OpenAI objects; they never
touch MLX. A body over the size limit is refused before it is read whole."""

import asyncio
import logging
from typing import Dict

import jinja2

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from adapters.errors import DFlashError

from .protocol import APIError, Body, ChatBody, CompletionBody, Reply, dflash_stats, error_body, sse
from .scheduler import Delta, Job, Scheduler

logger = logging.getLogger("dflash.server")


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 before it is read whole, at
    once from its Content-Length or as soon as a chunked one passes the limit."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self.refuse(scope, receive, send)
        received, size = [], 0
        while not received or received[-1].get("more_body"):
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self.refuse(scope, receive, send)

        async def replay():
            return received.pop(0) if received else await receive()

        await self.app(scope, replay, send)

    async def refuse(self, scope, receive, send):
        message = f"the request body is over the server's limit of {self.max_bytes} bytes"
        await JSONResponse(error_body(message, code="body_too_large"), status_code=413)(scope, receive, send)


def create_app(scheduler: Scheduler, models: Dict[str, str], max_body_bytes: int) -> FastAPI:
    """`models`: served name -> route (see protocol.model_names)."""
    app = FastAPI(title="dflash-serve")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.exception_handler(APIError)
    async def api_error(_, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(DFlashError)
    @app.exception_handler(jinja2.TemplateError)
    async def bad_input(_, e: Exception):
        return JSONResponse(error_body(str(e)), status_code=400)

    @app.exception_handler(Exception)
    async def bug(_, e: Exception):
        logger.error("request failed", exc_info=e)
        return JSONResponse(error_body(f"internal error: {e}", kind="server_error"), status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_, e: RequestValidationError):
        first = e.errors()[0]
        if first["type"] == "json_invalid":
            return JSONResponse(error_body(f"malformed JSON: {first['ctx']['error']}"), status_code=400)
        where = [str(part) for part in first["loc"][1:]]  # after "body"
        message = f"{'.'.join(where)}: {first['msg']}" if where else first["msg"]
        return JSONResponse(error_body(message, param=where[0] if where else None), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_, e: HTTPException):
        return JSONResponse(error_body(str(e.detail)), status_code=e.status_code, headers=e.headers)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return scheduler.status()

    def model_object(name: str) -> dict:
        return {"id": name, "object": "model", "created": 0, "owned_by": "dflash-mlx", "route": models[name]}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_object(name) for name in models]}

    @app.get("/v1/models/{name:path}")
    async def retrieve_model(name: str):
        route_of(name)
        return model_object(name)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody, http: HTTPRequest):
        job = Job(body.request(route_of(body.model)), body.stop_strings(), body.chat_messages())
        return await answer(http, body, job, Reply(chat=True, model=body.model))

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, http: HTTPRequest):
        job = Job(body.request(route_of(body.model)), body.stop_strings())
        return await answer(http, body, job, Reply(chat=False, model=body.model))

    def route_of(name: str) -> str:
        if name not in models:
            raise APIError(404, f"the model '{name}' does not exist; choose one of {', '.join(models)}",
                           code="model_not_found", param="model")  # fmt: skip
        return models[name]

    async def answer(http: HTTPRequest, body: Body, job: Job, reply: Reply):
        """Wait for the job's first step, so that a bad prompt is a plain error response, then
        reply whole or as a stream."""
        await asyncio.to_thread(scheduler.prepare, job)
        scheduler.submit(job)
        watcher = asyncio.create_task(cancel_on_disconnect(http, job))
        try:
            delta = await job.next()
            if body.stream:
                return StreamingResponse(stream(job, reply, delta, body.include_usage), media_type="text/event-stream")
            text = delta.text
            while delta.finish_reason is None:
                delta = await job.next()
                text += delta.text
            return JSONResponse(reply.whole(text, delta.finish_reason, delta.stats, job.decision))
        finally:
            # From here a stream's own disconnect watch takes over (Starlette cancels it).
            watcher.cancel()

    return app


async def cancel_on_disconnect(http: HTTPRequest, job: Job) -> None:
    while (await http.receive())["type"] != "http.disconnect":
        pass
    job.cancel()


async def stream(job: Job, reply: Reply, delta: Delta, include_usage: bool):
    """Server-sent events: a chunk per step with text, the finish reason, the usage if asked,
    then [DONE]. An error after the first chunk (the server shutting down) ends the stream with
    an error event."""
    try:
        if reply.chat:
            yield sse(reply.role_chunk())
        while delta.finish_reason is None:
            if delta.text:
                yield sse(reply.chunk(delta.text))
            delta = await job.next()
        yield sse(reply.chunk(delta.text, delta.finish_reason, dflash=dflash_stats(delta.stats, job.decision)))
        if include_usage:
            yield sse(reply.usage_chunk(delta.stats))
        yield sse("[DONE]")
    except APIError as e:
        yield sse(e.body())
    finally:
        job.cancel()  # a no-op once the job is done

