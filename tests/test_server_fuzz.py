"""A bounded, seeded fuzz test of `dflash-serve`'s HTTP API on loopback: a few hundred requests,
four at a time, whose every field (and the body's shape) is drawn from plausible values, edge
values and random JSON. None may get a 5xx or an error that is not one line in OpenAI's shape,
and the server must be healthy and idle at the end."""

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from dflash.server.cli import build_parser, listen, make_server

WINDOW = 64  # a small context window bounds every answer
REQUESTS = 300
SEED = 22
DEADLINE_S = 240


@pytest.fixture(scope="module")
def url(make_pair):
    target, draft = make_pair("llama", max_position_embeddings=WINDOW)
    args = build_parser().parse_args(["--port", "0", "--log-level", "critical", "--target-model", target,
                                      "--draft-model", draft, "--fast-model", target, "--router", "guardrails",
                                      "--max-body-mb", "0.02"])  # fmt: skip
    listener = listen("127.0.0.1", 0)
    server = make_server(args)
    thread = server.start_in_thread(listener)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


def any_json(rng: random.Random, depth: int = 0):
    """A random JSON value, edge values likelier than in a uniform draw."""
    kinds = ["null", "bool", "int", "float", "str"] + (["list", "dict"] if depth < 2 else [])
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, 1, -1, 7, 511, 512, 2**31, 2**63, 2**64, -(2**64), 10**30, rng.randint(-1000, 1000)])
    if kind == "float":
        return rng.choice([0.0, -0.0, 0.5, 1.0, 2.5, 1e-320, 1e308, -1e308, float("nan"), float("inf"), float("-inf")])
    if kind == "str":
        return rng.choice(["", " ", "hi", "fox " * 40, "\ud800", "a\udfffb", "é中🦊", "\x00", "<|eot_id|>", "x" * 30000])
    if kind == "list":
        return [any_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["role", "content", "type", "text", "x"]): any_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def message(rng: random.Random):
    role = rng.choice(["user"] * 4 + ["system", "assistant", "tool", "", "\ud800"])
    content = rng.choice(["hi", "def add(a, b):", "The quick", "", None, [{"type": "text", "text": "hi"}], "\udc80",
                          [{"type": "image"}], any_json(rng)])  # fmt: skip
    return {"role": role, "content": content}


# Each field: (values a client would send, hostile values).
FIELDS = {
    "max_tokens": ([1, 4, 8, 10**9], [0, -1, 10**30, 2.0, 2.5, "8"]),
    "max_completion_tokens": ([1, 6, 10**9], [0, -3]),
    "temperature": ([0, 0.7, 1.0], [1e308, -1, float("nan"), float("inf"), "hot"]),
    "top_p": ([1.0, 0.9], [0, 1.5, float("nan")]),
    "top_k": ([0, 5], [-1, 10**9, 1.5]),
    "min_p": ([0.0, 0.1], [1.0, -0.5, float("inf")]),
    "seed": ([None, 0, 7, 2**64 - 1], [-1, 2**64, 10**30, 3.5]),
    "stop": ([None, "", "a", ["\n", "x"]], [["\ud800"], [1], ["a"] * 20]),
    "stream": ([True, False], ["yes", 2]),
    "stream_options": ([None, {"include_usage": True}], [{"include_usage": "no"}, []]),
    "n": ([1], [2, 0]),
}
PROMPTS = [lambda rng: rng.choice(["hi", "The quick brown fox", "", "   ", "\ud800", "fox " * WINDOW]),
           lambda rng: [rng.choice([0, 5, 100, 511, 512, -5, 999999, 10**30]) for _ in range(rng.randint(0, 6))],
           lambda rng: list(range(1, WINDOW + rng.randint(-2, 1)))]  # fmt: skip


def random_request(rng: random.Random) -> tuple:
    """(method, path, body text): most of them what a client would send, with a few odd values."""
    if rng.random() < 0.05:
        return "GET", "/v1/models/" + rng.choice(["target", "fast", "auto", "nope", "a/b", "%00"]), None
    chat = rng.random() < 0.5
    path = "/v1/chat/completions" if chat else "/v1/completions"
    if rng.random() < 0.05:
        return "POST", path, json.dumps(any_json(rng))
    hostile = 0.5 if rng.random() < 0.4 else 0.03  # the chance of each field to be hostile
    body = {"model": rng.choice(["target", "fast", "auto"]) if rng.random() > hostile / 3 else any_json(rng)}
    if chat:
        body["messages"] = [message(rng) for _ in range(rng.randint(1, 3))] if rng.random() > hostile / 3 else any_json(rng)
    else:
        body["prompt"] = rng.choice(PROMPTS)(rng) if rng.random() > hostile / 3 else any_json(rng)
    for name, (usual, odd) in FIELDS.items():
        if rng.random() < 0.4:
            body[name] = rng.choice(usual) if rng.random() > hostile else rng.choice([*odd, any_json(rng)])
    if rng.random() < 0.3:  # a short answer keeps the test quick
        body["max_tokens"] = rng.randint(1, 8)
    text = json.dumps(body)  # NaN, Infinity and lone surrogates as Python's json writes them
    if rng.random() < 0.03:
        text = text[: rng.randint(0, len(text))]  # cut short: malformed
    return "POST", path, text


def send(client: httpx.Client, request: tuple) -> tuple:
    method, path, text = request
    headers = {"content-type": "application/json"}
    response = client.request(method, path, content=None if text is None else text.encode(), headers=headers)
    return request, response


def check(request: tuple, response: httpx.Response) -> None:
    assert response.status_code in (200, 400, 404, 413), (request, response.status_code, response.text[:300])
    if response.status_code != 200:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and "\n" not in error["message"], (request, error)
    elif response.headers["content-type"].startswith("text/event-stream"):
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]", (request, response.text[-300:])


def test_random_requests_get_no_5xx_and_leave_the_server_healthy(url):
    rng = random.Random(SEED)
    requests = [random_request(rng) for _ in range(REQUESTS)]
    start = time.monotonic()
    with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda request: send(client, request), requests))
    for request, response in results:
        check(request, response)
    statuses = [response.status_code for _, response in results]
    assert statuses.count(200) >= REQUESTS // 10 and statuses.count(400) >= REQUESTS // 5  # both paths exercised
    assert time.monotonic() - start < DEADLINE_S
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    metrics = httpx.get(url + "/metrics").json()
    assert metrics["active"] == metrics["waiting"] == 0
