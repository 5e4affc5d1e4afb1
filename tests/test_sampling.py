"""Sampling at temperature > 0 is lossless: the committed tokens are distributed exactly as plain
sampling from the target with the same settings.

The statistical tests count sampled tokens and compare the counts with the target's exact
distribution by Pearson's chi-square. Bins expecting fewer than 5 draws are pooled, so under the
null hypothesis (a lossless sampler) the statistic is close to chi-square with (bins - 1)
degrees of freedom; a test fails when its p-value is below SIGNIFICANCE = 1e-3. The seeds are
fixed, so every test is deterministic; the significance is the chance that seeds picked at
random would fail a correct sampler (under 2% over the 20 statistical tests here), and
`test_the_check_catches_a_wrong_correction` shows that such counts and this threshold do catch a
classic bug.
"""

import math
from collections import Counter, defaultdict
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.sample_utils import make_sampler

import dflash
from adapters import Verification
from dflash.acceptance import (
    ACCEPTANCE_RULES,
    ArgmaxProposals,
    SpeculativeSampling,
    make_acceptance,
)
from dflash.generate import speculative_generate_step
from dflash.loading import DFlashModel
from dflash.sampling import SamplingSettings
from dflash.stats import GenerationStats
from tests.helpers import DRAFT_VOCAB

SIGNIFICANCE = 1e-3
MIN_EXPECTED = 5


def chi_square_p_value(statistic: float, df: int) -> float:
    """P(X >= statistic) for X ~ chi-square(df): one minus the regularized lower incomplete
    gamma function P(df / 2, statistic / 2), summed as its power series."""
    if df == 0 or statistic <= 0:
        return 1.0
    s, x = df / 2, statistic / 2
    term = total = 1 / s
    n = 0
    while term > 1e-16 * total:
        n += 1
        term *= x / (s + n)
        total += term
    return max(0.0, 1 - math.exp(s * math.log(x) - x - math.lgamma(s)) * total)


def goodness_of_fit(tables) -> float:
    """p-value of Pearson's chi-square over independent multinomial tables, each a list of
    (observed, expected) counts, one per outcome. Within a table the outcomes expecting least
    are pooled until every bin expects at least MIN_EXPECTED; a table gives bins - 1 degrees of
    freedom. An outcome of probability 0 that was drawn fails outright."""
    statistic, df = 0.0, 0
    for table in tables:
        assert all(observed == 0 for observed, expected in table if expected == 0), "drew a filtered-out token"
        bins, observed_sum, expected_sum = [], 0, 0.0
        for observed, expected in sorted(table, key=lambda cell: cell[1]):
            observed_sum, expected_sum = observed_sum + observed, expected_sum + expected
            if expected_sum >= MIN_EXPECTED:
                bins.append([observed_sum, expected_sum])
                observed_sum, expected_sum = 0, 0.0
        if not bins:
            continue
        bins[-1][0] += observed_sum  # what is left over expects too little for a bin of its own
        bins[-1][1] += expected_sum
        statistic += sum((observed - expected) ** 2 / expected for observed, expected in bins)
        df += len(bins) - 1
    return chi_square_p_value(statistic, df)


def probabilities(settings: SamplingSettings, logits) -> np.ndarray:
    return np.array(mx.softmax(settings.sampling_logits(mx.array(logits)), axis=-1))


SETTINGS = {
    "t1": SamplingSettings(temperature=1.0),
    "t0.7-topk2": SamplingSettings(temperature=0.7, top_k=2),
    "t1.5-topp0.8": SamplingSettings(temperature=1.5, top_p=0.8),
    "t1-minp0.2": SamplingSettings(temperature=1.0, min_p=0.2),
}


# ---------------------------------------------------------------------------------------------
# A table target and table drafters, run by the real decode loop. A tiny transformer costs tens of
# milliseconds a draw on 2 shared cores, too slow for thousands of draws per setting; these cost
# almost nothing beyond the acceptance rule itself.

TABLE_VOCAB = 4
TABLE_BLOCK = 4
TABLE_PROMPT = [1, 2]
rng = np.random.default_rng(0)
BIGRAM = 1.5 * rng.standard_normal((TABLE_VOCAB, TABLE_VOCAB)).astype(np.float32)
SKIP = rng.standard_normal((TABLE_VOCAB, TABLE_VOCAB)).astype(np.float32)


def target_logits(last_two) -> np.ndarray:
    """The table target's next-token logits: a function of the last two tokens only."""
    second_last, last = last_two
    return BIGRAM[last] + SKIP[second_last]


class TokenHistory:
    """The table target's cache: the tokens it has run."""

    state = mx.array(0)

    def __init__(self):
        self.tokens = []


class TableTarget:
    """Stands in for an adapter: logits from `target_logits`, which the loop reads as final hidden
    states through an identity LM head. Token 0 stands before the first prompt token."""

    def make_cache(self):
        return [TokenHistory()]

    def verify(self, tokens, caches, layer_ids):
        history = caches[0].tokens
        start = len(history)
        history += tokens[0].tolist()
        padded = [0] + history
        logits = mx.array(np.stack([target_logits(padded[i : i + 2]) for i in range(start, len(history))]))[None]
        return Verification(logits, logits, lambda n: history.__delitem__(slice(start + n, None)))

    def lm_head(self, hidden):
        return hidden

    def embed(self, tokens):
        return tokens


class TableDrafter:
    """Block position i's logits are a function of the last committed token: rows[i][last]."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows
        self.config = SimpleNamespace(block_size=len(rows), target_layer_ids=[0], mask_token_id=0,
                                      draft_vocab_size=None, scales_logits=False)

    def make_cache(self, context_window=None):
        return None

    def __call__(self, block, context, cache):
        return mx.array(self.rows[: block.shape[1], block[0, 0].item()])[None]

    def finish_block(self, hidden, lm_head, anchors, selector=True):
        logits = lm_head(hidden)
        return logits, mx.argmax(logits, axis=-1)  # no path selector: the best block is the argmax


def table_drafter(quality: str) -> TableDrafter:
    """good: i steps ahead, the bigram part of the target alone (no filters) run i times;
    bad: the same with its preferences reversed, so it proposes what the target finds unlikely."""
    transition = np.exp(BIGRAM) / np.exp(BIGRAM).sum(axis=-1, keepdims=True)
    ahead = [np.linalg.matrix_power(transition, i) for i in range(TABLE_BLOCK)]
    rows = np.log(np.stack(ahead) + 1e-9)
    return TableDrafter(rows if quality == "good" else -rows)


def run_table_model(acceptance, quality: str, tokens: int, seed: int, block_size=None) -> tuple:
    """The generated sequence, prompt included, and its statistics."""
    model = DFlashModel(None, TableTarget(), table_drafter(quality))
    stats = GenerationStats()
    steps = speculative_generate_step(mx.array(TABLE_PROMPT), model, max_tokens=tokens, acceptance=acceptance,
                                      seed=seed, stats=stats, block_size=block_size)  # fmt: skip
    return TABLE_PROMPT + [token for committed in steps for token in committed], stats


def transition_tables(sequence: list, settings: SamplingSettings):
    """Plain sampling from the table target makes a second-order Markov chain, so one long
    generation tests every token at once: given the pair of tokens before it, each token is a
    draw from the target's probabilities for that pair, and Pearson's statistic summed over the
    pairs is chi-square as for independent tables (Anderson and Goodman, 1957)."""
    following = defaultdict(Counter)
    for i in range(2, len(sequence)):
        following[tuple(sequence[i - 2 : i])][sequence[i]] += 1
    for pair, counts in following.items():
        expected = sum(counts.values()) * probabilities(settings, target_logits(pair))
        yield [(counts[token], expected[token]) for token in range(TABLE_VOCAB)]


CASES = [(name, "speculative", "good", None) for name in SETTINGS] + [
    ("t1", "speculative", "bad", None),
    ("t0.7-topk2", "speculative", "bad", None),
    ("t1", "match", "good", None),
    ("t1.5-topp0.8", "match", "bad", None),
    ("t1", "argmax", "good", None),
    ("t0.7-topk2", "argmax", "bad", None),
    ("t1-minp0.2", "argmax", "good", None),
    ("t1", "speculative", "good", "auto"),
    ("t1", "argmax", "bad", "auto"),
]


@pytest.mark.slow  # thousands of draws per setting; the broken-correction checks stay fast
@pytest.mark.parametrize("setting, rule, quality, block_size", CASES)
def test_every_token_follows_the_target(setting, rule, quality, block_size):
    """Blocks of 3 proposals, or of the size chosen every step ("auto", from past steps only):
    every accepted proposal, correction and bonus token must follow the target's distribution
    given the two tokens before it. The bad drafter takes more steps per token, hence fewer tokens."""
    settings = SETTINGS[setting]
    acceptance = ACCEPTANCE_RULES[rule](settings)
    tokens = 2000 if quality == "good" else 1200
    sequence, stats = run_table_model(acceptance, quality, tokens, seed=7, block_size=block_size)
    assert goodness_of_fit(transition_tables(sequence, settings)) > SIGNIFICANCE

    stats = stats.acceptance_stats
    assert 0 in stats.accepted and max(stats.accepted) >= 1  # rejections and acceptances
    if quality == "good" and block_size is None:
        assert TABLE_BLOCK - 1 in stats.accepted  # full accepts, with their bonus tokens
    # Each tested proposal is accepted with the probability summed in the rule's expected count,
    # so realized minus expected is a sum of centred Bernoullis: within 4 standard deviations.
    expected = stats.expected_speculative if rule == "speculative" else stats.expected_match
    assert abs(sum(stats.accepted) - sum(expected)) < 4 * math.sqrt(sum(stats.tested) / 4)
    assert stats.expected_speculative_rate >= stats.expected_match_rate


class WrongCorrection(SpeculativeSampling):
    """A classic bug: after a rejection, draw the target's token from p instead of max(0, p - q)."""

    def correction(self, p, q):
        return p


class WrongArgmaxCorrection(ArgmaxProposals):
    """The argmax rule's version of the bug: after rejecting x, draw from p, x included."""

    def correction(self, p, q):
        return p


# With these token counts the check caught each bug with every one of 6 seeds tried (p < 1e-4
# for the speculative rule's, p < 1e-6 for the argmax rule's).
@pytest.mark.parametrize("broken_rule, tokens", [(WrongCorrection, 3000), (WrongArgmaxCorrection, 1000)])
def test_the_check_catches_a_wrong_correction(broken_rule, tokens):
    settings = SETTINGS["t1"]
    sequence, _ = run_table_model(broken_rule(settings), "good", tokens=tokens, seed=7)
    assert goodness_of_fit(transition_tables(sequence, settings)) < SIGNIFICANCE


@pytest.mark.parametrize("setting", SETTINGS)
def test_filters_are_mlx_lm_samplers(setting):
    """`sampling_logits` (what p and q are made of, and what plain decoding draws from) gives the
    distribution mlx-lm's own sampler draws from with the same settings."""
    settings = SETTINGS[setting]
    logits = mx.random.normal((16,), key=mx.random.key(3)) * 2
    draws = 20000
    mx.random.seed(0)
    logprobs = mx.broadcast_to(logits - mx.logsumexp(logits), (draws, 16))
    mlx_lm_sampler = make_sampler(settings.temperature, top_p=settings.top_p, min_p=settings.min_p,
                                  top_k=settings.top_k)  # fmt: skip
    counts = Counter(mlx_lm_sampler(logprobs).tolist())
    expected = draws * probabilities(settings, logits)
    assert goodness_of_fit([[(counts[token], expected[token]) for token in range(16)]]) > SIGNIFICANCE


# ---------------------------------------------------------------------------------------------
# A tiny random transformer pair, loaded through the real loaders.


@pytest.fixture(scope="module")
def tiny_pair(make_pair):
    return dflash.load(*make_pair("llama", layers=2, draft_layers=1, block_size=4))


def continuation_probabilities(model, prompt, settings, length) -> dict:
    """The exact probability of every continuation of `length` tokens that plain sampling can draw."""
    if length == 0:
        return {(): 1.0}
    first = probabilities(settings, model.target(mx.array([prompt]))[0, -1])
    return {
        (int(token),) + rest: first[token] * p
        for token in np.flatnonzero(first)
        for rest, p in continuation_probabilities(model, prompt + [int(token)], settings, length - 1).items()
    }


def first_tokens_table(model, prompt, settings, draws, rule, length=2):
    """Observed and exact counts of the first `length` generated tokens of `draws` generations."""
    counts = Counter()
    for seed in range(draws):
        steps = speculative_generate_step(
            mx.array(prompt), model, max_tokens=length, acceptance=ACCEPTANCE_RULES[rule](settings), seed=seed
        )
        counts[tuple(token for committed in steps for token in committed)] += 1
    exact = continuation_probabilities(model, prompt, settings, length)
    table = [(counts[tokens], draws * p) for tokens, p in exact.items()]
    assert sum(observed for observed, _ in table) == draws  # no draw outside the filtered support
    return table


@pytest.mark.slow  # 200 generations per rule
@pytest.mark.parametrize("rule", ACCEPTANCE_RULES)
def test_tiny_transformer_first_tokens_follow_the_target(tiny_pair, rule):
    """The real adapter and drafter: the random drafter is bad, so the second token is mostly a
    correction; its joint law with the first must still be the target's."""
    model, _ = tiny_pair
    table = first_tokens_table(model, [5, 17, 99, 230], SamplingSettings(temperature=1.0, top_k=3), 200, rule)
    assert goodness_of_fit([table]) > SIGNIFICANCE


@pytest.mark.slow  # 300 sampled generations
def test_hybrid_target_first_three_tokens_follow_the_target(make_pair):
    """A Qwen3.5-style target (GatedDeltaNet layers, then attention): the third token is drawn after
    the step that drew the second, which mostly rejects the random drafter's proposals, so its law
    depends on the rolled-back recurrent state too."""
    model, _ = dflash.load(*make_pair("qwen3_5", layers=3, draft_layers=1, block_size=4))
    table = first_tokens_table(model, [5, 17, 99, 230], SamplingSettings(temperature=1.0, top_k=3), 300,
                               "speculative", length=3)  # fmt: skip
    assert goodness_of_fit([table]) > SIGNIFICANCE


@pytest.mark.slow  # 200 sampled generations
def test_a_drafter_with_a_draft_vocabulary_first_tokens_follow_the_target(make_pair):
    """Its proposal law is zero outside its vocabulary; the target's law still decides."""
    model, _ = dflash.load(*make_pair("llama", layers=2, draft_layers=1, block_size=4, draft_vocab=DRAFT_VOCAB))
    table = first_tokens_table(model, [5, 17, 99, 230], SamplingSettings(temperature=1.0, top_k=3), 200, "speculative")
    assert goodness_of_fit([table]) > SIGNIFICANCE


@pytest.mark.parametrize("rule", ACCEPTANCE_RULES)
def test_same_seed_same_text(tiny_pair, rule):
    model, tokenizer = tiny_pair
    settings = SamplingSettings(temperature=1.0, top_p=0.95)
    acceptance = make_acceptance(settings, rule)
    first = dflash.generate(model, tokenizer, [5, 17, 99], 24, acceptance=acceptance, seed=11)
    again = dflash.generate(model, tokenizer, [5, 17, 99], 24, acceptance=acceptance, seed=11)  # the rule holds no state
    fresh = dflash.generate(model, tokenizer, [5, 17, 99], 24, acceptance=make_acceptance(settings, rule), seed=11)
    other = dflash.generate(model, tokenizer, [5, 17, 99], 24, acceptance=make_acceptance(settings, rule), seed=12)
    assert first.tokens == again.tokens == fresh.tokens != other.tokens
    assert first.stats.acceptance_lengths == fresh.stats.acceptance_lengths
    assert first.stats.acceptance_stats.expected_speculative == fresh.stats.acceptance_stats.expected_speculative
