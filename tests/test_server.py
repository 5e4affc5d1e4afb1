"""`dflash-serve` through the real `openai` client, on loopback: chat and text completions,
streaming, `auto` routing, concurrent requests each exactly its lone answer, cancellation, every
bad request, and graceful shutdown."""

import asyncio
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from adapters.routing import EXPERT, FAST
from dflash.commands import engine_from
from dflash.engine import Request
from dflash.generate import collect
from dflash.sampling import SamplingSettings
from dflash.server.cli import build_parser, listen, make_server
from dflash.server.cli import main as serve_main
from dflash.server.protocol import model_names
from eval.cli import main as eval_main
from eval.serve_load import ServerProcess

PROMPTS = ["The quick brown fox", "Write def add(a, b): in Python.", "A small model proposes", "Hi! How are you?",
           "for i in range(10):", "Speculative decoding drafts", "the lazy dog jumps", "0123456789"]  # fmt: skip
CODE_PROMPT, CHAT_PROMPT = PROMPTS[1], PROMPTS[3]
MAX_TOKENS = 24
SAMPLED = dict(temperature=1.0, seed=7)


def server_argv(make_pair):
    target, draft = make_pair("llama")
    return ["--target-model", target, "--draft-model", draft, "--fast-model", target, "--router", "guardrails"]


@pytest.fixture(scope="module")
def served(make_pair):
    """A server in this process on a free loopback port, and what the engine answers each prompt alone."""
    args = build_parser().parse_args(["--port", "0", "--log-level", "warning", *server_argv(make_pair)])
    engine = engine_from(args)
    alone = {p: collect(engine.stream(Request(p, MAX_TOKENS), EXPERT)).text for p in PROMPTS}
    raw = collect(engine.stream(Request(PROMPTS[0], MAX_TOKENS, chat=False), EXPERT)).text
    sampling = SamplingSettings(temperature=SAMPLED["temperature"])
    sampled = collect(engine.stream(Request(CHAT_PROMPT, MAX_TOKENS, sampling, seed=SAMPLED["seed"]), FAST)).text

    listener = listen("127.0.0.1", 0)
    server = make_server(args)
    thread = server.start_in_thread(listener)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    pair = next(name for name, route in model_names(engine).items() if route == EXPERT)
    yield {"url": url, "alone": alone, "raw": raw, "sampled": sampled, "pair": pair}
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served["url"] + "/v1", api_key="none", max_retries=0)


def chat(client, prompt, model, **kwargs):
    kwargs.setdefault("max_tokens", MAX_TOKENS)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **kwargs)


def streamed_chat(client, prompt, model, **kwargs) -> str:
    chunks = chat(client, prompt, model, stream=True, **kwargs)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_models_health_and_metrics(served, client):
    assert {m.id for m in client.models.list()} == {served["pair"], "fast", "auto"}
    assert httpx.get(served["url"] + "/health").json() == {"status": "ok"}
    chat(client, PROMPTS[0], served["pair"])
    metrics = httpx.get(served["url"] + "/metrics").json()
    assert metrics["requests"] >= 1 and metrics["finished"] >= 1 and metrics["queue_depth"] == 0
    assert metrics["tokens_per_second"] > 0 and metrics["tau"] >= 1


def test_chat_is_the_single_request_answer_with_usage_and_acceptance_stats(served, client):
    reply = chat(client, PROMPTS[0], served["pair"])
    assert reply.choices[0].message.content == served["alone"][PROMPTS[0]]
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == MAX_TOKENS
    assert reply.usage.prompt_tokens > 0
    stats = reply.model_extra["dflash"]
    assert stats["route"] == EXPERT and sum(stats["acceptance_lengths"]) >= MAX_TOKENS - 1
    assert stats["tau"] == pytest.approx(sum(stats["acceptance_lengths"]) / len(stats["acceptance_lengths"]))


def test_streaming_text_equals_non_streaming(served, client):
    assert streamed_chat(client, PROMPTS[2], served["pair"]) == served["alone"][PROMPTS[2]]
    whole = client.completions.create(model=served["pair"], prompt=PROMPTS[0], max_tokens=MAX_TOKENS)
    chunks = list(client.completions.create(model=served["pair"], prompt=PROMPTS[0], max_tokens=MAX_TOKENS,
                                            stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert whole.choices[0].text == "".join(c.choices[0].text for c in chunks if c.choices) == served["raw"]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == MAX_TOKENS


def test_auto_routes_with_the_router(served, client):
    code, hello = chat(client, CODE_PROMPT, "auto"), chat(client, CHAT_PROMPT, "auto")
    assert code.model_extra["dflash"]["route"] == EXPERT and "code" in code.model_extra["dflash"]["route_reason"]
    assert hello.model_extra["dflash"]["route"] == FAST and hello.model_extra["dflash"]["tau"] is None
    # The fast model here is the expert's target, and greedy DFlash is exact: the same text either way.
    assert hello.choices[0].message.content == served["alone"][CHAT_PROMPT]


def test_stop_strings_cut_the_answer(served, client):
    text = served["alone"][PROMPTS[0]]
    stop = text[6:9]
    expected = text[: text.find(stop)]
    reply = chat(client, PROMPTS[0], served["pair"], stop=[stop, "never there"])
    assert reply.choices[0].message.content == expected and reply.choices[0].finish_reason == "stop"
    assert streamed_chat(client, PROMPTS[0], served["pair"], stop=stop) == expected


def test_concurrent_streams_each_get_their_single_request_text(served):
    async def one(client, prompt):
        stream = await client.chat.completions.create(
            model=served["pair"], messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS, stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def all_at_once():
        async with openai.AsyncOpenAI(base_url=served["url"] + "/v1", api_key="none", max_retries=0) as client:
            return await asyncio.gather(*(one(client, p) for p in PROMPTS))

    assert asyncio.run(all_at_once()) == [served["alone"][p] for p in PROMPTS]


def test_a_seed_gives_the_same_sample_however_requests_interleave(served, client):
    alone = chat(client, CHAT_PROMPT, "fast", **SAMPLED).choices[0].message.content
    assert alone == served["sampled"]
    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(lambda kwargs: chat(client, CHAT_PROMPT, "fast", **kwargs).choices[0].message.content,
                              [SAMPLED, {}, {"temperature": 1.0}, SAMPLED]))  # fmt: skip
    assert texts[0] == texts[3] == alone


def metrics_when(url, condition, timeout_s=5.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while not condition(metrics := httpx.get(url + "/metrics").json()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return metrics


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_stops_its_generation(served, stream):
    before = httpx.get(served["url"] + "/metrics").json()["cancelled"]
    body = {"model": served["pair"], "prompt": PROMPTS[0], "max_tokens": 2000, "stream": stream}
    if stream:
        with httpx.stream("POST", served["url"] + "/v1/completions", json=body) as response:
            next(response.iter_lines())
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(served["url"] + "/v1/completions", json=body, timeout=0.5)
    metrics = metrics_when(served["url"], lambda m: m["cancelled"] > before and m["active"] == 0)
    assert metrics["cancelled"] == before + 1 and metrics["active"] == 0


def assert_openai_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(served, client):
    post = lambda body, **kw: httpx.post(served["url"] + "/v1/chat/completions", json=body, **kw)  # noqa: E731
    json_header = {"content-type": "application/json"}
    assert_openai_error(post(None, content=b'{"model": "x", "messages": [', headers=json_header), 400)
    assert_openai_error(post({"model": served["pair"]}), 400)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=served["pair"], messages=[])
    with pytest.raises(openai.BadRequestError, match="max tokens must be at least 1"):
        chat(client, PROMPTS[0], served["pair"], max_tokens=0)
    with pytest.raises(openai.NotFoundError, match="does not exist") as error:
        chat(client, PROMPTS[0], "no-such-model")
    assert error.value.body["code"] == "model_not_found" and error.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError, match="context window"):
        chat(client, " ".join(["fox"] * 2000), served["pair"])
    with pytest.raises(openai.BadRequestError, match="context window"):
        client.completions.create(model=served["pair"], prompt=" ".join(["fox"] * 2000), stream=True)
    with pytest.raises(openai.BadRequestError, match="top-p"):
        chat(client, PROMPTS[0], served["pair"], temperature=1.0, top_p=0)
    assert chat(client, PROMPTS[0], served["pair"]).choices[0].message.content == served["alone"][PROMPTS[0]]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_shuts_the_server_down_within_seconds_without_a_traceback(make_pair, sig):
    server = ServerProcess(server_argv(make_pair))
    url = f"http://127.0.0.1:{server.port}"
    try:
        model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
        malformed = httpx.post(url + "/v1/completions", content=b"{", headers={"content-type": "application/json"})
        assert malformed.status_code == 400
        assert httpx.post(url + "/v1/completions", json={"model": "nope", "prompt": "x"}).status_code == 404
        long_prompt = {"model": model, "prompt": " ".join(["fox"] * 2000)}
        assert httpx.post(url + "/v1/completions", json=long_prompt).status_code == 400
        generating, events = threading.Event(), []

        def read_stream():
            body = {"model": model, "prompt": PROMPTS[0], "max_tokens": 5000, "stream": True}
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as response:
                for line in response.iter_lines():
                    generating.set()
                    events.extend([json.loads(line[6:])] if line.startswith("data: {") else [])

        reader = threading.Thread(target=read_stream)
        reader.start()
        assert generating.wait(30)
        seconds = server.stop(sig, timeout_s=15)
        reader.join(10)
    finally:
        server.stop(signal.SIGKILL)
    log = "".join(server.log)
    assert seconds < 8, log
    assert server.process.returncode in (0, -sig), log
    assert "Traceback" not in log and "ERROR" not in log, log
    assert events and events[-1]["error"]["code"] == "shutting_down"


def test_a_bad_block_size_stops_the_server_at_startup(make_pair, capsys):
    assert serve_main(["--port", "0", *server_argv(make_pair), "--block-size", "99"]) == 2
    err = capsys.readouterr().err
    assert "block size must be between 2 and the drafter's 16, got 99" in err and "Traceback" not in err


@pytest.mark.slow
def test_serve_load_eval_on_the_tiny_pair(make_pair, capsys):
    """Requests sharing target passes with the block size chosen for the batch: each text its lone one."""
    eval_main(["serve-load", "--requests", "8", "--max-tokens", "16", "--json", "--", *server_argv(make_pair),
               "--block-size", "auto"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["finished"] == report["equal_texts"] == 8
    assert report["concurrent"]["tokens"] == report["sequential"]["tokens"] == 8 * 16
