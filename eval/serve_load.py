"""`dflash-eval serve-load`: many streaming requests at once against `dflash-serve` on loopback,
checked against the same requests sent one after another.

    dflash-eval serve-load --requests 50 --max-tokens 128
    dflash-eval serve-load --requests 8 -- --target-model T --draft-model D   # dflash-serve options after --

Starts the server (the shipped pair unless options after `--` say otherwise) on a free loopback
port, sends the requests one at a time, then all at once, checks that every concurrent answer is
the text its lone run gave (greedy), and prints the wall time and aggregate tokens/s of each way.
"""

import argparse
import http.client
import json
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import List

from adapters.errors import DFlashError

from .suites import load_suites

HOST = "127.0.0.1"  # loopback only
MAX_REQUESTS = 200
READY_LINE = "dflash-serve: serving "


def add_serve_load(subcommands) -> None:
    parser = subcommands.add_parser(
        "serve-load",
        help="concurrent streaming requests against dflash-serve, checked against the same requests one by one",
        description=__doc__.strip().splitlines()[0],
    )
    parser.add_argument("--requests", type=request_count, default=50,
                        help=f"requests (default 50, at most {MAX_REQUESTS})")
    parser.add_argument("--max-tokens", type=int, default=128, help="new tokens per request (default 128)")
    parser.add_argument("--suite", default="offline", help="prompts, used in turn (default: the offline suite)")
    parser.add_argument("--model", help="served model name to ask (default: the DFlash pair)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds a request may wait on the server before the run fails (default 300)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("server_args", nargs="*", help="dflash-serve's options (models, router), after --")
    parser.set_defaults(run=serve_load)


def request_count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_REQUESTS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_REQUESTS}, got {value}")
    return value


@dataclass
class Answer:
    text: str
    tokens: int
    seconds: float
    first_text_s: float  # until the first chunk with text


class ServerProcess:
    """`dflash-serve` in a child process on a free loopback port; its output is kept in `log`."""

    def __init__(self, server_args: List[str], timeout_s: float = 120.0):
        command = [sys.executable, "-m", "dflash.server", "--host", HOST, "--port", "0", *server_args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.log: List[str] = []
        ready: queue.Queue = queue.Queue()
        threading.Thread(target=self._read_log, args=(ready,), daemon=True).start()
        try:
            line = ready.get(timeout=timeout_s)
        except queue.Empty:
            line = None
        if not line:
            self.stop()
            raise DFlashError("dflash-serve did not start:\n" + "".join(self.log[-10:]))
        self.port = int(line.rsplit(":", 1)[1])

    def _read_log(self, ready: queue.Queue) -> None:
        for line in self.process.stdout:
            self.log.append(line)
            if line.startswith(READY_LINE):
                ready.put(line.strip())
        ready.put(None)  # the process ended

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> float:
        """Signal the server and wait for it to exit; returns the seconds it took."""
        tic = time.perf_counter()
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return time.perf_counter() - tic

    def get(self, path: str) -> dict:
        connection = http.client.HTTPConnection(HOST, self.port, timeout=30)
        connection.request("GET", path)
        return json.loads(connection.getresponse().read())

    def stream_chat(self, body: dict, timeout_s: float) -> Answer:
        """One streamed chat completion: its text, completion tokens and timings."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        tic = time.perf_counter()
        connection = http.client.HTTPConnection(HOST, self.port, timeout=timeout_s)
        connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise DFlashError(f"the server answered {response.status}: {response.read().decode()}")
        text, tokens, first_text_s = "", 0, None
        for line in response:
            data = line.decode().removeprefix("data: ").strip()
            if not line.startswith(b"data: ") or data == "[DONE]":
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                raise DFlashError(f"the stream ended with an error: {chunk['error']['message']}")
            for choice in chunk["choices"]:
                if choice["delta"].get("content"):
                    first_text_s = first_text_s or time.perf_counter() - tic
                    text += choice["delta"]["content"]
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
        connection.close()
        return Answer(text, tokens, time.perf_counter() - tic, first_text_s or 0.0)


def summary(answers: List[Answer], wall_s: float) -> dict:
    tokens = sum(a.tokens for a in answers)
    return {
        "requests": len(answers),
        "tokens": tokens,
        "wall_s": wall_s,
        "tokens_per_second": tokens / wall_s,
        "latency_median_s": statistics.median(a.seconds for a in answers),
        "first_text_median_s": statistics.median(a.first_text_s for a in answers),
    }


def run_load(server: ServerProcess, prompts: List[str], model: str, max_tokens: int, timeout_s: float) -> dict:
    bodies = [{"model": model, "messages": [{"role": "user", "content": p}], "max_tokens": max_tokens}
              for p in prompts]  # fmt: skip
    server.stream_chat(bodies[0], timeout_s)  # warm-up, untimed

    tic = time.perf_counter()
    alone = [server.stream_chat(body, timeout_s) for body in bodies]
    sequential = summary(alone, time.perf_counter() - tic)

    tic = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        together = list(pool.map(lambda body: server.stream_chat(body, timeout_s), bodies))
    concurrent = summary(together, time.perf_counter() - tic)

    return {
        "model": model,
        "max_tokens": max_tokens,
        "sequential": sequential,
        "concurrent": concurrent,
        "finished": len(together),
        "equal_texts": sum(a.text == b.text for a, b in zip(alone, together)),
        "server_metrics": server.get("/metrics"),
    }


def serve_load(args, argv: List[str]) -> None:
    suite = [p.prompt for p in load_suites([args.suite])]
    prompts = [suite[i % len(suite)] for i in range(args.requests)]
    server = ServerProcess([a for a in args.server_args if a != "--"])
    try:
        model = args.model or next(m["id"] for m in server.get("/v1/models")["data"] if m["route"] == "expert")
        report = run_load(server, prompts, model, args.max_tokens, args.timeout)
    finally:
        shutdown_s = server.stop()
    report["shutdown_s"] = shutdown_s
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    if report["equal_texts"] != args.requests:
        raise DFlashError(f"{args.requests - report['equal_texts']} concurrent answers differ from their lone runs")


def print_report(report: dict) -> None:
    print(f"model {report['model']}, {report['max_tokens']} new tokens per request")
    for way in ("sequential", "concurrent"):
        s = report[way]
        print(f"{way:>10}: {s['requests']} requests, {s['tokens']} tokens in {s['wall_s']:.1f} s = "
              f"{s['tokens_per_second']:.1f} tokens/s; latency median {s['latency_median_s']:.2f} s, "
              f"first text median {s['first_text_median_s']:.2f} s")  # fmt: skip
    tau = report["server_metrics"]["tau"]
    print(f"finished {report['finished']}, texts equal to the lone runs {report['equal_texts']}/{report['finished']}"
          + (f", server tau {tau:.2f}" if tau is not None else "") + f", shutdown {report['shutdown_s']:.1f} s")
