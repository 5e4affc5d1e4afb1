"""The prefix cache: a request that starts from an earlier one's caches decodes what it decodes
cold (greedy token for token, sampled with a seed the same tokens), on dense, hybrid and
sliding-window targets, alone and in a batch, through the Python API and the server; entries
are evicted under a small limit."""

import json
import threading

import httpx
import pytest
from mlx_lm.models.cache import ArraysCache

import dflash
from dflash import DFlashError
from dflash.acceptance import make_acceptance
from dflash.batch import batch_generate
from dflash.prefix_cache import PrefixCache
from dflash.sampling import SamplingSettings
from dflash.server.cli import build_parser, listen, make_server
from eval.cli import main as eval_main
from tests.helpers import DraftLog, assert_same_up_to_rounding, prompt_of, rounding_bound

FAST = ["llama", "qwen3_5"]  # attention only; recurrent layers
SLOW = ["gpt_oss", "gemma4_text", "qwen3_next"]  # sliding windows (and sinks); KV-shared layers; recurrent MoE
TOKENS = 12
FIRST = prompt_of(30, seed=1)


def load(make_pair, family: str):
    model, tokenizer = dflash.load(*make_pair(family))
    model.adapter.stop_tokens = lambda tokenizer: set()  # every answer runs to its max tokens
    recurrent = any(isinstance(cache, ArraysCache) for cache in model.adapter.make_cache())
    return model, tokenizer, recurrent


def seeded_cache(model, tokenizer):
    """A cache holding the first request's caches, and that request's answer."""
    cache = PrefixCache()
    return cache, dflash.generate(model, tokenizer, FIRST, TOKENS, prefix_cache=cache).tokens


def cases(answer):
    """name -> (prompt, tokens a KV-only target reuses, tokens a target with recurrent layers reuses).
    The first request's caches hold its prompt and its answer but the last token."""
    held = len(FIRST) + len(answer) - 1
    return {
        "the next turn": (FIRST + answer + prompt_of(7, seed=2), held, held),
        "a prefix ending inside the first prompt": (FIRST[:17] + prompt_of(9, seed=3), 17, 0),
        "a prefix ending inside the first answer": (FIRST + answer[:-2] + [answer[-2] + 1], held - 1, 0),
        "an exact repeat": (FIRST, len(FIRST) - 1, 0),
    }


@pytest.mark.parametrize("family", FAST + [pytest.param(f, marks=pytest.mark.slow) for f in SLOW])
def test_a_request_from_cached_prefixes_decodes_what_it_decodes_cold(make_pair, family):
    model, tokenizer, recurrent = load(make_pair, family)
    sampled = make_acceptance(SamplingSettings(temperature=1.0, top_k=20), model.acceptance_rule)
    _, answer = seeded_cache(model, tokenizer)
    for name, (prompt, dense, hybrid) in cases(answer).items():
        # Greedy, the drafter's logits compared too (the target decides the tokens whatever it drafts).
        for options in ({"acceptance": DraftLog()}, {"acceptance": sampled, "seed": 3}):
            cold = dflash.generate(model, tokenizer, prompt, TOKENS, **options).tokens
            cache, _ = seeded_cache(model, tokenizer)
            warm_options = {**options, "acceptance": DraftLog()} if "seed" not in options else options
            warm = dflash.generate(model, tokenizer, prompt, TOKENS, prefix_cache=cache, **warm_options)
            assert warm.tokens == cold, name
            assert warm.stats.cached_tokens == (hybrid if recurrent else dense), name
            if "seed" not in options:
                cold_steps = options["acceptance"].logits[len(prompt)]
                warm_steps = warm_options["acceptance"].logits[len(prompt)]
                assert len(warm_steps) == len(cold_steps)
                for single, reused in zip(cold_steps, warm_steps):
                    bound = rounding_bound(model.adapter, len(prompt) + TOKENS, single,
                                           extra_layers=model.draft.config.num_hidden_layers)  # fmt: skip
                    assert_same_up_to_rounding(reused, single, bound)


@pytest.mark.parametrize("family", FAST)
def test_rows_of_a_batch_reuse_and_leave_their_caches(make_pair, family):
    model, tokenizer, recurrent = load(make_pair, family)
    cache, answer = seeded_cache(model, tokenizer)
    prompts, dense, hybrid = zip(*cases(answer).values())
    prompts = list(prompts) + [prompt_of(11, seed=4)]  # and one with nothing cached
    results = batch_generate(model, tokenizer, prompts, TOKENS, prefix_cache=cache)
    assert [r.tokens for r in results] == [dflash.generate(model, tokenizer, p, TOKENS).tokens for p in prompts]
    assert [r.stats.cached_tokens for r in results] == list(hybrid if recurrent else dense) + [0]
    # Each row left its caches: its next turn reuses them, alone and in a batch.
    follow_ups = [p + r.tokens + prompt_of(5, seed=5) for p, r in zip(prompts, results)]
    cold = [dflash.generate(model, tokenizer, p, TOKENS).tokens for p in follow_ups]
    alone = dflash.generate(model, tokenizer, follow_ups[-1], TOKENS, prefix_cache=cache)
    assert alone.tokens == cold[-1] and alone.stats.cached_tokens == len(prompts[-1]) + TOKENS - 1
    again = batch_generate(model, tokenizer, follow_ups, TOKENS, prefix_cache=cache)
    assert [r.tokens for r in again] == cold
    assert all(r.stats.cached_tokens >= len(p) + TOKENS - 1 for r, p in zip(again, prompts))


def test_entries_are_evicted_least_recently_used_first_under_the_limit(make_pair):
    model, tokenizer, _ = load(make_pair, "llama")
    probe = PrefixCache()
    dflash.generate(model, tokenizer, prompt_of(20, seed=6), TOKENS, prefix_cache=probe)
    entry = probe.stats()["bytes"]
    cache = PrefixCache(max_gb=1.5 * entry / 1e9)  # room for one entry
    a, b = prompt_of(20, seed=6), prompt_of(20, seed=7)
    dflash.generate(model, tokenizer, a, TOKENS, prefix_cache=cache)
    dflash.generate(model, tokenizer, b, TOKENS, prefix_cache=cache)
    stats = cache.stats()
    assert stats["entries"] == 1 and stats["bytes"] <= stats["max_bytes"]
    assert dflash.generate(model, tokenizer, a, TOKENS, prefix_cache=cache).stats.cached_tokens == 0  # evicted
    assert cache.fetch(b) is None  # b's entry made room for a's in turn
    # A longer entry that extends a shorter one replaces it.
    roomy = PrefixCache()
    first = dflash.generate(model, tokenizer, a, TOKENS, prefix_cache=roomy).tokens
    dflash.generate(model, tokenizer, a + first + [5, 6], TOKENS, prefix_cache=roomy)
    assert roomy.stats()["entries"] == 1


def test_bad_settings_are_refused(make_pair):
    model, tokenizer, _ = load(make_pair, "llama")
    for size in (0, -1, float("nan"), "1"):
        with pytest.raises(DFlashError, match="prefix cache's size must be a positive number of GB"):
            PrefixCache(size)
    with pytest.raises(DFlashError, match="a prefix cache cannot keep a drafter with a context window"):
        dflash.generate(model, tokenizer, FIRST, TOKENS, prefix_cache=PrefixCache(), draft_window=8)
    with pytest.raises(DFlashError, match="a prefix cache cannot keep a drafter with a context window"):
        batch_generate(model, tokenizer, [FIRST], TOKENS, prefix_cache=PrefixCache(), draft_window=8)
    with pytest.raises(DFlashError, match="plain decoding has no drafter"):
        dflash.generate(model.adapter, tokenizer, FIRST, TOKENS, prefix_cache=PrefixCache())


def test_the_server_shares_prefixes_between_concurrent_requests_and_reports_them(make_pair):
    target, draft = make_pair("llama")
    common = ["--target-model", target, "--draft-model", draft, "--fast-model", target, "--router", "guardrails",
              "--port", "0", "--log-level", "warning"]  # fmt: skip
    system = "You are a careful assistant. " * 20
    first = [{"role": "system", "content": system}, {"role": "user", "content": "Hello there"}]

    def serve(*options):
        server = make_server(build_parser().parse_args(common + list(options)))
        listener = listen("127.0.0.1", 0)
        thread = server.start_in_thread(listener)
        return server, thread, f"http://127.0.0.1:{listener.getsockname()[1]}"

    def ask(url, messages, out=None, key=None):
        reply = httpx.post(url + "/v1/chat/completions", timeout=120,
                           json={"model": "target", "messages": messages, "max_tokens": TOKENS}).json()  # fmt: skip
        if out is not None:
            out[key] = reply
        return reply

    answers = {}
    for options in ([], ["--prefix-cache-gb", "0"]):
        server, thread, url = serve(*options)
        opening = ask(url, first)
        turn = first + [{"role": "assistant", "content": opening["choices"][0]["message"]["content"]}]
        follow_ups = {q: turn + [{"role": "user", "content": q}] for q in ("Tell me more", "Why?", "Thanks")}
        replies = {}
        threads = [threading.Thread(target=ask, args=(url, m, replies, q)) for q, m in follow_ups.items()]
        [t.start() for t in threads]
        [t.join() for t in threads]
        answers[bool(options)] = {q: r["choices"][0]["message"]["content"] for q, r in replies.items()}
        metrics = httpx.get(url + "/metrics", timeout=10).json()["prefix_cache"]
        if not options:  # the cache on: every follow-up reused the opening's caches
            assert metrics["hits"] >= 3 and metrics["reused_tokens"] > 3 * 40 and metrics["bytes"] > 0
            assert all(r["usage"]["prompt_tokens_details"]["cached_tokens"] > 40 for r in replies.values())
        else:
            assert metrics is None
        server.should_exit = True
        thread.join(10)
    assert answers[False] == answers[True]


def test_the_benchmark_times_both_ways_and_checks_the_answers(make_pair, tmp_path):
    target, draft = make_pair("llama")
    eval_main(["prefix-cache", "--target-model", target, "--draft-model", draft, "--system-tokens", "80", "--turns",
               "2", "--max-tokens", "6", "--repeats", "1", "--out", str(tmp_path)])  # fmt: skip
    rows = json.loads((tmp_path / "report.json").read_text())["rows"]
    assert [row["turn"] for row in rows] == [1, 2] and all(row["exact"] for row in rows)
    assert rows[0]["cached_tokens"] == 0 and rows[1]["cached_tokens"] >= 80 and rows[1]["cache_mb"] > 0
    assert "first token, cached (ms)" in (tmp_path / "report.md").read_text()
