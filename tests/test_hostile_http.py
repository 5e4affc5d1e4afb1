"""`dflash-serve` against hostile clients, through the real `openai` client and raw httpx on
loopback: every bad request gets its one-line OpenAI-style error with the right status and the
server stays healthy; bad requests sent together with good ones leave every good answer its lone
text; a request that fails in the batch's prefill fails alone; bodies over the limit are refused
before they are read whole."""

import asyncio
import json

import httpx
import openai
import pytest

from adapters.routing import EXPERT
from dflash.commands import engine_from
from dflash.engine import Prepared, Request
from dflash.generate import collect
from dflash.server.cli import build_parser, listen, make_server
from dflash.server.protocol import model_names
from dflash.server.scheduler import Job

WINDOW = 256  # the tiny target's context window here
MAX_BODY_MB = 0.05  # 50 kB: over-limit bodies stay cheap to send
GOOD = ["The quick brown fox", "def add(a, b):", "A small model proposes", "0123456789"]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def served(make_pair):
    target, draft = make_pair("llama", max_position_embeddings=WINDOW)
    argv = ["--port", "0", "--log-level", "critical", "--target-model", target, "--draft-model", draft,
            "--fast-model", target, "--router", "guardrails", "--max-body-mb", str(MAX_BODY_MB)]  # fmt: skip
    args = build_parser().parse_args(argv)
    engine = engine_from(args)
    alone = {p: collect(engine.stream(Request(p, MAX_TOKENS, chat=False), EXPERT)).text for p in GOOD}
    listener = listen("127.0.0.1", 0)
    server = make_server(args)
    thread = server.start_in_thread(listener)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    pair = next(name for name, route in model_names(engine).items() if route == EXPERT)
    yield {"url": url, "alone": alone, "pair": pair, "server": server}
    server.should_exit = True
    thread.join(10)


def healthy(url: str) -> bool:
    return httpx.get(url + "/health", timeout=10).json() == {"status": "ok"}


def raw(served, path: str, text: str, **kwargs) -> httpx.Response:
    """POST `text` as it is: JSON that Python's json module reads (NaN, Infinity, lone surrogates)."""
    headers = {"content-type": "application/json"}
    return httpx.post(served["url"] + path, content=text.encode(), headers=headers, timeout=60, **kwargs)


def completion(pair: str, **fields) -> str:
    return json.dumps({"model": pair, "max_tokens": MAX_TOKENS, **fields})


# (what is sent, the status, words of the message): text completions unless the JSON has "messages".
CASES = [
    ('{"prompt": [999999]}', 400, "token id 999999 is not in the target's vocabulary (0 to 511)"),
    ('{"prompt": [-5]}', 400, "token id -5 is not in the target's vocabulary"),
    ('{"prompt": [512]}', 400, "token id 512 is not in the target's vocabulary"),
    ('{"prompt": [1, 100000000000000000000000000]}', 400, "token id 100000000000000000000000000 is not in"),
    ('{"prompt": []}', 400, "the prompt is empty"),
    ('{"prompt": "   "}', 400, "the prompt is empty"),
    ('{"prompt": "a\\ud800b"}', 400, "the prompt is not valid Unicode text: a lone surrogate at character 1"),
    ('{"messages": [{"role": "user", "content": "\\udc80"}]}', 400, "is not valid Unicode text: a lone surrogate at character 0"),
    ('{"messages": [{"role": "\\ud800", "content": "hi"}]}', 400, "message 0's role is not valid Unicode"),
    ('{"prompt": "hi", "temperature": Infinity}', 400, "temperature must be 0 (greedy) or a finite number"),
    ('{"prompt": "hi", "temperature": 1e999}', 400, "temperature must be 0 (greedy) or a finite number"),
    ('{"prompt": "hi", "temperature": NaN}', 400, "temperature must be 0"),
    ('{"prompt": "hi", "temperature": -Infinity}', 400, "temperature must be 0"),
    ('{"prompt": "hi", "temperature": 1, "top_p": Infinity}', 400, "top-p must be in (0, 1]"),
    ('{"prompt": "hi", "temperature": 1, "min_p": NaN}', 400, "min-p must be in [0, 1)"),
    ('{"prompt": "hi", "top_k": -1}', 400, "top-k must be an integer >= 0"),
    ('{"prompt": "hi", "seed": -1, "temperature": 0.7}', 400, "seed must be a whole number from 0 to 2**64 - 1, got -1"),
    ('{"prompt": "hi", "seed": 18446744073709551616}', 400, "seed must be a whole number from 0 to 2**64 - 1"),
    ('{"prompt": "hi", "seed": 1.5}', 400, "seed"),
    ('{"prompt": "hi", "max_tokens": 0}', 400, "max tokens must be at least 1, got 0"),
    ('{"prompt": "hi", "max_tokens": -7}', 400, "max tokens must be at least 1, got -7"),
    ('{"prompt": [1, 2, 3], "max_tokens": "many"}', 400, "max_tokens"),
    ('{"prompt": %s}' % list(range(3, 3 + WINDOW)), 400, f"the prompt has {WINDOW} tokens; the target's context window is {WINDOW}"),
    ('{"prompt": {"text": "hi"}}', 400, "prompt"),
    ('{"messages": "hi"}', 400, "messages"),
    ('{"messages": []}', 400, "messages"),
    ('{"prompt": "hi", "stop": [1]}', 400, "stop"),
    ('{"prompt": "hi", "n": 2}', 400, "n"),
    ('{"prompt": "hi", "model": "nope"}', 404, "the model 'nope' does not exist"),
    ('{"prompt": "hi", "model": null}', 400, "model"),
    ('[1, 2]', 400, "valid dictionary"),
    ('{"prompt": "hi"', 400, "malformed JSON"),
]


@pytest.mark.parametrize("text, status, message", CASES, ids=[case[0][:40] for case in CASES])
def test_a_bad_request_gets_one_clear_error_and_the_server_stays_healthy(served, text, status, message):
    body = json.loads(text) if text.startswith("{") and text.endswith("}") else None
    if isinstance(body, dict):
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        text = completion(served["pair"], **body)  # the model and max_tokens, unless the case sets them
    else:
        path = "/v1/completions"
    response = raw(served, path, text)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and message in error["message"], error
    assert "\n" not in error["message"] and "Traceback" not in error["message"]
    assert healthy(served["url"])


def test_the_openai_client_gets_the_same_errors(served):
    client = openai.OpenAI(base_url=served["url"] + "/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="token id 999999 is not in the target's vocabulary"):
        client.completions.create(model=served["pair"], prompt=[999999], max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="seed must be a whole number"):
        client.chat.completions.create(model=served["pair"], messages=[{"role": "user", "content": "hi"}], seed=-1,
                                       temperature=0.7)  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="the prompt has 300 tokens; the target's context window"):
        client.completions.create(model=served["pair"], prompt=[7] * 300, max_tokens=4, stream=True)
    with pytest.raises(openai.BadRequestError, match="max tokens must be at least 1, got 0"):
        client.completions.create(model=served["pair"], prompt="hi", max_tokens=0)
    assert healthy(served["url"])


def test_models_retrieve(served):
    client = openai.OpenAI(base_url=served["url"] + "/v1", api_key="none", max_retries=0)
    for name in (served["pair"], "fast", "auto"):
        assert client.models.retrieve(name).id == name
    with pytest.raises(openai.NotFoundError, match="the model 'nope' does not exist"):
        client.models.retrieve("nope")


def test_generation_stops_at_the_context_window_with_finish_reason_length(served):
    prompt = list(range(3, 3 + WINDOW - 5))  # 5 positions left
    for max_tokens in (10**9, 10**30):
        reply = httpx.post(served["url"] + "/v1/completions", timeout=60,
                           json={"model": served["pair"], "prompt": prompt, "max_tokens": max_tokens}).json()  # fmt: skip
        choice = reply["choices"][0]
        assert choice["finish_reason"] == "length", reply
        assert reply["usage"]["prompt_tokens"] + reply["usage"]["completion_tokens"] == WINDOW


def test_bodies_over_the_limit_are_refused_before_they_are_read(served):
    limit = int(MAX_BODY_MB * 1e6)
    over = completion(served["pair"], prompt="fox " * (limit // 4))
    declared = raw(served, "/v1/completions", over)
    assert declared.status_code == 413
    assert declared.json()["error"]["message"] == f"the request body is over the server's limit of {limit} bytes"

    def chunks():  # no Content-Length: the limit counts the chunks as they come
        for i in range(0, len(over), 4096):
            yield over[i : i + 4096].encode()

    chunked = httpx.post(served["url"] + "/v1/completions", content=chunks(),
                         headers={"content-type": "application/json"}, timeout=60)  # fmt: skip
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "body_too_large"
    under = completion(served["pair"], prompt=" ".join(["fox"] * (limit // 8)))
    assert len(under) < limit
    assert "context window" in raw(served, "/v1/completions", under).json()["error"]["message"]
    assert healthy(served["url"])


BAD_BODIES = [
    {"prompt": "hi", "seed": -1, "temperature": 0.7},
    {"prompt": [999999]},
    {"prompt": "\ud800"},
    {"prompt": "hi", "max_tokens": 0},
    {"prompt": "hi", "temperature": float("inf")},
    {"prompt": list(range(3, 3 + WINDOW))},
]


def test_bad_requests_in_a_batch_of_good_ones_leave_every_good_answer_its_lone_text(served):
    async def send(client, body):
        text = completion(served["pair"], **body)  # json.dumps writes inf and lone surrogates, as httpx would not
        return await client.post("/v1/completions", content=text.encode(), headers={"content-type": "application/json"})

    async def all_at_once():
        async with httpx.AsyncClient(base_url=served["url"], timeout=60) as client:
            bodies = [{"prompt": p} for p in GOOD] + BAD_BODIES
            bodies = [bodies[i] for i in (0, 4, 1, 5, 6, 2, 7, 8, 3, 9)]  # bad ones between the good ones
            return bodies, await asyncio.gather(*(send(client, body) for body in bodies))

    for _ in range(2):
        bodies, replies = asyncio.run(all_at_once())
        for body, reply in zip(bodies, replies):
            if body in BAD_BODIES:
                assert reply.status_code == 400, reply.text
            else:
                assert reply.status_code == 200 and reply.json()["choices"][0]["text"] == served["alone"][body["prompt"]]
    assert healthy(served["url"])


def test_a_job_whose_prefill_fails_fails_alone(served):
    """A job that passed the checks but fails in the batch's insert (here a prepared request the
    engine would never make: max_tokens 0) fails alone; the jobs inserted with it go on, each
    with its lone text."""
    scheduler = served["server"].scheduler

    async def run():
        jobs = []
        for prompt in GOOD[:2] + ["broken"] + GOOD[2:]:
            job = Job(Request(prompt if prompt != "broken" else GOOD[0], MAX_TOKENS, chat=False), [])
            scheduler.prepare(job)
            if prompt == "broken":
                prepared = job.prepared[EXPERT]
                job.prepared[EXPERT] = Prepared(prepared.request, EXPERT, prepared.prompt_ids, max_tokens=0)
            jobs.append(job)
        for job in jobs:  # in one cycle
            scheduler.submit(job)
        texts = []
        for job in jobs:
            try:
                text, delta = "", None
                while delta is None or delta.finish_reason is None:
                    delta = await job.next()
                    text += delta.text
                texts.append(text)
            except Exception as e:  # noqa: BLE001
                texts.append(e)
        return texts

    texts = asyncio.run(run())
    assert texts[:2] + texts[3:] == [served["alone"][p] for p in GOOD]
    assert texts[2].status == 400 and "max tokens must be at least 1" in str(texts[2])
    assert healthy(served["url"])
