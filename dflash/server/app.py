"""The HTTP endpoints: OpenAI's chat and text completions (whole or streamed as server-sent
events), the model list, health and metrics. Handlers parse, submit a job to the scheduler and
turn its deltas into OpenAI objects; they never touch MLX."""

import asyncio
from typing import Dict

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from adapters.errors import DFlashError

from .protocol import APIError, Body, ChatBody, CompletionBody, Reply, dflash_stats, error_body, sse
from .scheduler import Delta, Job, Scheduler


def create_app(scheduler: Scheduler, models: Dict[str, str]) -> FastAPI:
    """`models`: served name -> route (see protocol.model_names)."""
    app = FastAPI(title="dflash-serve")

    @app.exception_handler(APIError)
    async def api_error(_, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(DFlashError)
    async def bad_input(_, e: DFlashError):
        return JSONResponse(error_body(str(e)), status_code=400)

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

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "dflash-mlx",
                                            "route": route} for name, route in models.items()]}  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody, http: HTTPRequest):
        job = Job(body.request(route_of(body)), body.stop_strings(), body.chat_messages())
        return await answer(http, body, job, Reply(chat=True, model=body.model))

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, http: HTTPRequest):
        job = Job(body.request(route_of(body)), body.stop_strings())
        return await answer(http, body, job, Reply(chat=False, model=body.model))

    def route_of(body: Body) -> str:
        if body.model not in models:
            raise APIError(404, f"the model '{body.model}' does not exist; choose one of {', '.join(models)}",
                           code="model_not_found", param="model")  # fmt: skip
        return models[body.model]

    async def answer(http: HTTPRequest, body: Body, job: Job, reply: Reply):
        """Wait for the job's first step, so that a bad prompt is a plain error response, then
        reply whole or as a stream."""
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

