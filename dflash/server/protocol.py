"""The OpenAI side of the server: request bodies, the replies and stream chunks built from an
answer, and errors in OpenAI's shape."""

import json
import time
import uuid
from pathlib import Path
from typing import Dict, List, Literal, Optional, Union

from pydantic import BaseModel, Field

from adapters.routing import EXPERT, FAST

from ..engine import Engine, Request
from ..sampling import SamplingSettings
from ..stats import GenerationStats

AUTO = "auto"


class APIError(Exception):
    """An error the client gets as {"error": {...}} with `status`; its message is user-facing."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", code=None, param=None):
        super().__init__(message)
        self.status, self.kind, self.code, self.param = status, kind, code, param

    def body(self) -> dict:
        return error_body(str(self), self.kind, self.code, self.param)


def error_body(message: str, kind: str = "invalid_request_error", code=None, param=None) -> dict:
    # A message may quote the request, lone surrogates and all: they go out escaped, as \ud800.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down", kind="server_error", code="shutting_down")


def client_disconnected() -> APIError:
    return APIError(499, "the client disconnected", code="client_disconnected")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: str
    content: Union[str, List[TextPart], None] = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class Body(BaseModel):
    """What chat and text completions share. Temperature defaults to 0: greedy, the exact path."""

    model: str
    max_tokens: Optional[int] = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: Optional[int] = None
    stop: Union[str, List[str], None] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: Literal[1] = 1

    def stop_strings(self) -> List[str]:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return [s for s in stop if s]

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def request(self, prompt, route: str, max_tokens: Optional[int]) -> Request:
        """The engine's request; chat templates are applied by the worker, once the route is known."""
        sampling = SamplingSettings(self.temperature, self.top_p, self.top_k, self.min_p)
        limit = {} if max_tokens is None else {"max_tokens": max_tokens}
        return Request(prompt, sampling=sampling, seed=self.seed, chat=False, route=route, **limit)


class ChatBody(Body):
    messages: List[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = None  # the newer name of max_tokens

    def request(self, route: str) -> Request:
        # The router reads the last message; the worker renders all of them.
        limit = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return super().request(self.messages[-1].text(), route, limit)

    def chat_messages(self) -> List[dict]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class CompletionBody(Body):
    prompt: Union[str, List[int]]  # text, or token ids

    def request(self, route: str) -> Request:
        return super().request(self.prompt, route, self.max_tokens)


def model_names(engine: Engine) -> Dict[str, str]:
    """The served model names and the route each one takes: the DFlash pair under its target's
    name (a local directory's or file's own name: `SmolLM2-135M-Instruct.Q4_1.gguf` for the offline
    default; a hub id as it is), the fast model and the router."""
    target = engine.target_path
    name = Path(target).name if Path(target).exists() else target
    return {name: EXPERT, FAST: FAST, AUTO: AUTO}


def usage(stats: GenerationStats) -> dict:
    completion = stats.generated_tokens
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": completion,
            "total_tokens": stats.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": stats.cached_tokens}}  # fmt: skip


def dflash_stats(stats: GenerationStats, decision) -> dict:
    """The extra field: where the request went, and on the expert route its acceptance statistics."""
    expert = decision.route == EXPERT
    return {
        "route": decision.route,
        "route_reason": decision.reason,
        "tau": stats.mean_acceptance if expert else None,
        "acceptance_lengths": stats.acceptance_lengths if expert else None,
        "tokens_per_second": stats.generation_tps,
    }


def sse(payload) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


class Reply:
    """The OpenAI objects of one answer: a chat completion or a text completion, whole or in chunks."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model = chat, model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _object(self, kind: str, choices: list, **extra) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices,
                **extra}  # fmt: skip

    def whole(self, text: str, finish_reason: str, stats: GenerationStats, decision) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        choice.update(finish_reason=finish_reason, logprobs=None)
        kind = "chat.completion" if self.chat else "text_completion"
        return self._object(kind, [choice], usage=usage(stats), dflash=dflash_stats(stats, decision))

    def chunk(self, text: str, finish_reason: Optional[str] = None, **extra) -> dict:
        if self.chat:
            choice = {"index": 0, "delta": {"content": text} if text or finish_reason is None else {}}
        else:
            choice = {"index": 0, "text": text}
        choice.update(finish_reason=finish_reason, logprobs=None)
        return self._object(self.chunk_kind, [choice], **extra)

    def role_chunk(self) -> dict:
        """A chat stream opens with the assistant's role."""
        return self._object(self.chunk_kind, [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                               "finish_reason": None, "logprobs": None}])  # fmt: skip

    def usage_chunk(self, stats: GenerationStats) -> dict:
        return self._object(self.chunk_kind, [], usage=usage(stats))

    @property
    def chunk_kind(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"
