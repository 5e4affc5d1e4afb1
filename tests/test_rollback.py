"""After speculative decoding, the target cache holds what plain decoding of the committed tokens
would have put there: same offset, same keys and values."""

import mlx.core as mx
import pytest

import dflash
from dflash.generate import generate
from tests.helpers import OracleProposals, assert_same_up_to_rounding, decode_alone, prompt_of, rounding_bound


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_rollback_leaves_the_cache_of_plain_decoding(make_pair, family):
    model, tokenizer = dflash.load(*make_pair(family))
    prompt = prompt_of(11)
    reference = generate(model.adapter, tokenizer, prompt, 45).tokens
    oracle = OracleProposals(reference, model.adapter.vocab_size, miss_every=4)
    steps, spec_cache = decode_alone(model, prompt, 45, oracle)
    committed = [token for step in steps for token in step]
    assert committed == reference
    assert max(len(step) for step in steps) > 2  # multi-token blocks were accepted and others cut short

    # Plain decoding: the prompt, then every committed token but the last, one at a time.
    plain_cache = model.adapter.make_cache()
    model.target(mx.array([prompt]), cache=plain_cache)
    for token in committed[:-1]:
        model.target(mx.array([[token]]), cache=plain_cache)

    for spec, plain in zip(spec_cache, plain_cache):
        assert spec.offset == plain.offset == len(prompt) + len(committed) - 1
        spec_keys, spec_values = spec.keys_and_values()
        plain_keys, plain_values = plain.keys_and_values()
        # Batched verification and one-token steps round differently only in the last bits.
        for spec_array, plain_array in ((spec_keys, plain_keys), (spec_values, plain_values)):
            bound = rounding_bound(model.adapter, plain.offset, plain_array)
            assert_same_up_to_rounding(spec_array, plain_array, bound)
