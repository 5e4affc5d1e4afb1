"""The scheduler: one worker thread does all of the server's MLX work, a decode step at a time.

Handlers `submit` jobs; the worker admits them and goes round in cycles. A new job is routed.
Jobs on the expert route join one `BatchDecoder` (dflash/batch.py), those admitted in the same
cycle prefilled together, and get their first token at once; each cycle then runs one batched
step, a drafter pass and a target pass shared by all of them. Jobs on the fast route are prefilled
alone and take one step of their own generator each. Every step's text goes to the job's asyncio
queue, which its handler reads. Each request has its own DecodeState (or mlx-lm cache) and its own
random stream (dflash/generate.py), so an answer is the same whatever it was interleaved with.
A job whose client went away is cancelled: the worker closes its generator and drops it.
"""

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Union

import jinja2

from adapters.errors import DFlashError
from adapters.routing import EXPERT, RouteDecision

from ..acceptance import make_acceptance
from ..batch import BatchDecoder
from ..decode import check_block_size, check_max_tokens
from ..engine import Engine, Request
from ..generate import encode_prompt
from ..stats import GenerationStats
from .protocol import APIError, client_disconnected, shutting_down

logger = logging.getLogger("dflash.server")


@dataclass
class Delta:
    """The text one step adds to an answer; the last one says why it ended and carries the stats."""

    text: str
    finish_reason: Optional[str] = None
    stats: Optional[GenerationStats] = None


class StopStrings:
    """Cuts an answer at the first of its stop strings. Text that could be the start of one is
    held back until the next step tells."""

    def __init__(self, stops: List[str]):
        self.stops, self.held = stops, ""

    def feed(self, text: str, last: bool) -> tuple:
        """(text to send now, whether a stop string was found)."""
        text, self.held = self.held + text, ""
        found = [text.find(stop) for stop in self.stops if stop in text]
        if found:
            return text[: min(found)], True
        if not last:
            keep = max((n for stop in self.stops for n in range(1, len(stop)) if text.endswith(stop[:n])), default=0)
            text, self.held = text[: len(text) - keep], text[len(text) - keep :]
        return text, False


class Job:
    """One request on its way through the worker. Made and read on the event loop."""

    def __init__(self, request: Request, stop: List[str], messages: Optional[List[dict]] = None):
        self.request, self.messages, self.stop = request, messages, StopStrings(stop)
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        # The worker's own:
        self.decision: Optional[RouteDecision] = None
        self.responses = None  # the engine's generator, for a job outside the batch
        self.joining: Optional[tuple] = None  # (prompt ids, max tokens, seed, acceptance): for the batch's next insert
        self.uid: Optional[int] = None  # the job's row in the batch
        self.done = False

    def push(self, event) -> None:
        """From the worker: a Delta or an APIError/DFlashError for the handler."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    async def next(self) -> Delta:
        event = await self.events.get()
        if isinstance(event, Exception):
            raise event
        return event

    def cancel(self) -> None:
        """The client is gone: the worker drops the job before its next step."""
        if not self.cancelled:
            self.cancelled = True
            self.events.put_nowait(client_disconnected())


class Metrics:
    def __init__(self):
        self.requests = self.finished = self.cancelled = self.failed = 0
        self.routes = {}
        self.generated_tokens = 0
        self.busy_time = 0.0  # seconds the worker spent on steps
        self.verify_steps = self.committed_tokens = 0  # expert route: tau is their ratio

    def snapshot(self, waiting: int, active: int) -> dict:
        return {
            "requests": self.requests, "finished": self.finished, "cancelled": self.cancelled,
            "failed": self.failed, "routes": dict(self.routes), "waiting": waiting, "active": active,
            "queue_depth": waiting + active, "generated_tokens": self.generated_tokens,
            "busy_seconds": self.busy_time,
            "tokens_per_second": self.generated_tokens / self.busy_time if self.busy_time else 0.0,
            "tau": self.committed_tokens / self.verify_steps if self.verify_steps else None,
        }  # fmt: skip


class Scheduler:
    def __init__(self, engine: Engine, block_size: Union[int, str, None] = None):
        self.engine = engine
        self.block_size = block_size  # of every expert-route request; None: the pair's
        self.pending: queue.Queue = queue.Queue()
        self.active: deque = deque()
        self.metrics = Metrics()
        self.lock = threading.Lock()  # between submit and the worker's closing
        self.deadline: Optional[float] = None  # once closing: when the open jobs are cut off
        self.thread: Optional[threading.Thread] = None
        self.batch: Optional[BatchDecoder] = None  # the expert route's shared decoder
        self.batched: Dict[int, Job] = {}  # batch row uid -> job

    def start(self) -> None:
        """Load the models on the worker thread, then serve; a loading error is raised here."""
        loaded = Future()
        self.thread = threading.Thread(target=self.run, args=(loaded,), name="dflash-worker", daemon=True)
        self.thread.start()
        loaded.result()

    def submit(self, job: Job) -> None:
        with self.lock:
            if self.deadline is not None:
                raise shutting_down()
            self.pending.put(job)

    def close(self, grace_s: float) -> None:
        """Take no new jobs; open ones have `grace_s` to finish, then end with a 503 error."""
        with self.lock:
            if self.deadline is None:
                self.deadline = time.monotonic() + grace_s
        self.pending.put(None)  # wakes an idle worker

    def join(self) -> None:
        self.thread.join()

    def status(self) -> dict:
        return self.metrics.snapshot(self.pending.qsize(), len(self.active))

    def run(self, loaded: Future) -> None:
        try:
            # Load everything the served names use now, not in the first requests.
            self.engine.expert, self.engine.fast, self.engine.router  # noqa: B018
            check_block_size(self.engine.expert[0], self.block_size)
        except BaseException as e:  # noqa: BLE001  (handed to start())
            loaded.set_exception(e)
            return
        self.batch = BatchDecoder(*self.engine.expert, block_size=self.block_size or self.engine.pair.block_size)
        loaded.set_result(None)
        while self.admit():
            for job in self.active:
                if job.cancelled:
                    self.end(job)
                    self.metrics.cancelled += 1
                elif job.uid is None:  # new, or outside the batch
                    self.advance(job)
            joining = [job for job in self.active if job.joining is not None and not job.done]
            if joining:
                self.add_to_batch(joining)
            if self.batched:
                self.step_batch()
            self.active = deque(job for job in self.active if not job.done)
        # Closing: whatever is still open, or was submitted just before, ends here.
        while not self.pending.empty():
            job = self.pending.get()
            if job is not None:
                self.active.append(job)
        for job in self.active:
            job.push(shutting_down())
            self.end(job)

    def admit(self) -> bool:
        """Move submitted jobs to the active ones, waiting while there is nothing to do. False
        when the worker should stop: closing, and nothing open or the grace period over."""
        while True:
            try:
                job = self.pending.get(block=not self.active and self.deadline is None)
            except queue.Empty:
                break
            if job is not None:
                self.active.append(job)
                self.metrics.requests += 1
        if self.deadline is None:
            return True
        return bool(self.active) and time.monotonic() < self.deadline

    def advance(self, job: Job) -> None:
        """Route a new job (and prefill it, outside the batch); one step of a job outside the batch."""
        tic = time.perf_counter()
        try:
            if job.decision is None:
                self.open(job)
            response = next(job.responses) if job.responses is not None else None
        except (DFlashError, jinja2.TemplateError) as e:
            return self.fail(job, APIError(400, str(e)))
        except Exception as e:  # noqa: BLE001  (a bug: log it, answer 500, keep serving)
            logger.exception("generation failed")
            return self.fail(job, APIError(500, f"internal error: {e}", kind="server_error"))
        finally:
            self.metrics.busy_time += time.perf_counter() - tic
        if response is not None:
            self.deliver(job, response)

    def add_to_batch(self, jobs: List[Job]) -> None:
        """Prefill the cycle's new jobs for the batch together and add them to it."""
        tic = time.perf_counter()
        try:
            prompts, max_tokens, seeds, acceptances = (list(column) for column in zip(*(job.joining for job in jobs)))
            uids = self.batch.insert(prompts, max_tokens, seeds, acceptances)
        except Exception as e:  # noqa: BLE001  (a bug: the jobs were checked; log it, answer 500, keep serving)
            logger.exception("prefill failed")
            for job in jobs:
                self.fail(job, APIError(500, f"internal error: {e}", kind="server_error"))
            return
        finally:
            self.metrics.busy_time += time.perf_counter() - tic
        for job, uid in zip(jobs, uids):
            job.joining, job.uid = None, uid
            self.batched[uid] = job
        for uid, response in self.batch.first_responses():  # before this cycle's step
            self.deliver(self.batched[uid], response)

    def step_batch(self) -> None:
        """One step of every job in the batch."""
        tic = time.perf_counter()
        try:
            responses = self.batch.step()
        except Exception as e:  # noqa: BLE001  (a bug: log it, fail the batch's jobs, keep serving)
            logger.exception("batched generation failed")
            for job in list(self.batched.values()):
                self.fail(job, APIError(500, f"internal error: {e}", kind="server_error"))
            return
        finally:
            self.metrics.busy_time += time.perf_counter() - tic
        for uid, response in responses:
            self.deliver(self.batched[uid], response)

    def deliver(self, job: Job, response) -> None:
        """Hand a step's text to the job, cut at its stop strings; finish the job with its last."""
        self.metrics.generated_tokens += len(response.tokens)
        text, stopped = job.stop.feed(response.text, last=response.finish_reason is not None)
        finish_reason = "stop" if stopped else response.finish_reason
        if finish_reason is None:
            job.push(Delta(text))
            return
        job.push(Delta(text, finish_reason, response.stats))
        self.end(job)
        self.metrics.finished += 1
        route = job.decision.route
        self.metrics.routes[route] = self.metrics.routes.get(route, 0) + 1
        self.metrics.verify_steps += len(response.stats.acceptance_lengths)
        self.metrics.committed_tokens += sum(response.stats.acceptance_lengths)

    def open(self, job: Job) -> None:
        """Route the job, then ready it for the batch or open its own generator; a chat is rendered
        with the chosen model's template."""
        job.decision = self.engine.route(job.request)
        request = job.request
        if job.messages is not None:
            request = replace(request, prompt=job.messages)
        if self.block_size is not None:
            request = replace(request, block_size=self.block_size)
        if job.decision.route != EXPERT:
            job.responses = self.engine.stream(request, job.decision.route)
            return
        model, tokenizer = self.engine.expert
        prompt_ids = encode_prompt(model.adapter, tokenizer, request.prompt, request.chat, request.thinking)
        check_max_tokens(request.max_tokens)
        job.joining = (prompt_ids, request.max_tokens, request.seed, make_acceptance(request.sampling, request.acceptance))

    def fail(self, job: Job, error: APIError) -> None:
        job.push(error)
        self.end(job)
        self.metrics.failed += 1

    def end(self, job: Job) -> None:
        job.done = True
        if job.responses is not None:
            job.responses.close()
        if self.batched.pop(job.uid, None) is not None:
            self.batch.remove({job.uid})
