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
from adapters.routing import EXPERT, FAST, RouteDecision

from ..batch import BatchDecoder
from ..engine import Engine, Prepared, Request
from ..stats import GenerationStats
from .protocol import AUTO, APIError, client_disconnected, shutting_down

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
    """One request on its way through the worker. Made and read on the event loop; a request
    with bad settings fails making it (a DFlashError)."""

    def __init__(self, request: Request, stop: List[str], messages: Optional[List[dict]] = None):
        self.request, self.stop = request, StopStrings(stop)  # the router reads `request`'s text
        self.generation = request if messages is None else replace(request, prompt=messages)
        # Route -> the request prepared for it (or why it cannot be), by `Scheduler.prepare`.
        self.prepared: Dict[str, Union[Prepared, Exception]] = {}
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
    def __init__(self, engine: Engine):
        self.engine = engine
        self.pending: queue.Queue = queue.Queue()
        self.active: deque = deque()
        self.metrics = Metrics()
        self.lock = threading.Lock()  # between submit and the worker's closing
        self.deadline: Optional[float] = None  # once closing: when the open jobs are cut off
        self.thread: Optional[threading.Thread] = None
        self.stopped = threading.Event()  # the worker is done
        self.batch: Optional[BatchDecoder] = None  # the expert route's shared decoder
        self.batched: Dict[int, Job] = {}  # batch row uid -> job

    def start(self) -> None:
        """Load the models on the worker thread, then serve; a loading error is raised here."""
        loaded = Future()
        self.thread = threading.Thread(target=self.work, args=(loaded,), name="dflash-worker", daemon=True)
        self.thread.start()
        try:
            loaded.result()
        except KeyboardInterrupt:  # ^C while loading: the worker stops once it has loaded, then parks
            self.close(0)
            self.stopped.wait()
            raise

    def prepare(self, job: Job) -> None:
        """Check and tokenize the job's request for each route it may take, off the worker (no
        MLX work), so that a long prompt holds up no one else's steps. A request that is bad
        whatever the route raises its error here."""
        routes = (job.request.route,) if job.request.route != AUTO else (EXPERT, FAST)
        for route in routes:
            try:
                job.prepared[route] = self.engine.prepare(job.generation, route)
            except (DFlashError, jinja2.TemplateError) as e:
                job.prepared[route] = e
        if all(isinstance(prepared, Exception) for prepared in job.prepared.values()):
            raise job.prepared[routes[0]]

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
        self.stopped.wait()

    def work(self, loaded: Future) -> None:
        """The worker thread: `run`, then stay parked until the process exits. A thread that has
        used MLX must not end while the interpreter may be finalizing: MLX's per-thread
        destructors, which run after the thread's Python code (and after a join), take the GIL,
        and taking it during finalization aborts the process ("terminate called without an
        active exception", rc 134, seen when the models failed to load)."""
        try:
            self.run(loaded)
        finally:
            self.stopped.set()
        threading.Event().wait()

    def status(self) -> dict:
        cache = self.engine.prefix_cache
        return {**self.metrics.snapshot(self.pending.qsize(), len(self.active)),
                "prefix_cache": cache.stats() if cache is not None else None}  # fmt: skip

    def run(self, loaded: Future) -> None:
        try:
            # Load everything the served names use now, not in the first requests.
            self.engine.expert, self.engine.fast, self.engine.router  # noqa: B018
            # One block size for the whole batch, so for every request: the engine's.
            self.batch = BatchDecoder(*self.engine.expert, block_size=self.engine.block_size,
                                      prefix_cache=self.engine.prefix_cache)  # fmt: skip
        except BaseException as e:  # noqa: BLE001  (handed to start())
            loaded.set_exception(e)
            return
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
        except Exception as e:  # noqa: BLE001  (a bug: logged, answered 500; the server keeps serving)
            return self.fail(job, error_reply(e, "generation failed"))
        finally:
            self.metrics.busy_time += time.perf_counter() - tic
        if response is not None:
            self.deliver(job, response)

    def add_to_batch(self, jobs: List[Job]) -> None:
        """Prefill the cycle's new jobs for the batch together and add them to it."""
        tic = time.perf_counter()
        try:
            inserted = self.insert(jobs)
        finally:
            self.metrics.busy_time += time.perf_counter() - tic
        for job, uid in inserted:
            job.joining, job.uid = None, uid
            self.batched[uid] = job
        for uid, response in self.batch.first_responses():  # before this cycle's step
            self.deliver(self.batched[uid], response)

    def insert(self, jobs: List[Job]) -> List[tuple]:
        """(job, uid) of each job inserted into the batch: all prefilled together, or, when that
        fails, each alone, so that a job that cannot be prefilled fails alone (an insert that
        fails adds no row)."""
        try:
            prompts, max_tokens, seeds, acceptances = (list(column) for column in zip(*(job.joining for job in jobs)))
            return list(zip(jobs, self.batch.insert(prompts, max_tokens, seeds, acceptances)))
        except Exception as e:  # noqa: BLE001  (a bug, the jobs being checked: logged, answered 500)
            if len(jobs) == 1:
                self.fail(jobs[0], error_reply(e, "prefill failed"))
                return []
        return [inserted for job in jobs for inserted in self.insert([job])]

    def step_batch(self) -> None:
        """One step of every job in the batch."""
        tic = time.perf_counter()
        try:
            responses = self.batch.step()
        except Exception as e:  # noqa: BLE001  (a bug: logged, the batch's jobs answered 500; the server keeps serving)
            error = error_reply(e, "batched generation failed")
            for job in list(self.batched.values()):
                self.fail(job, error)
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
        """Route the job, then ready it for the batch or open its own generator, with its request
        as prepared for the chosen route (a chat rendered with that model's template)."""
        job.decision = self.engine.route(job.request)
        prepared = job.prepared[job.decision.route]
        if isinstance(prepared, Exception):
            raise prepared
        if job.decision.route != EXPERT:
            job.responses = self.engine.run(prepared)
            return
        job.joining = (prepared.prompt_ids, prepared.max_tokens, prepared.request.seed, prepared.acceptance)

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


def error_reply(error: Exception, what: str) -> APIError:
    """The client's answer to an error on the worker: 400 for bad input, else (a bug) 500, logged."""
    if isinstance(error, (DFlashError, jinja2.TemplateError)):
        return APIError(400, str(error))
    logger.error(what, exc_info=error)
    return APIError(500, f"internal error: {error}", kind="server_error")
