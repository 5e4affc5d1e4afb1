import json

import pytest

import dflash  # noqa: F401  (OpenBLAS before mlx)
from tests.helpers import draft_config, published_config, save_random_draft, save_target, target_config, write_published


@pytest.fixture(scope="session")
def make_pair(tmp_path_factory):
    """make_pair(family, tied=..., kv_heads=..., draft_layers=..., block_size=..., draft_vocab=...) ->
    (target_dir, draft_dir), built once per distinct configuration."""
    built = {}

    def build(family="llama", *, tied=True, kv_heads=2, draft_layers=2, block_size=16, draft_vocab=None, **overrides):
        key = (family, tied, kv_heads, draft_layers, block_size, draft_vocab, tuple(sorted(overrides.items())))
        if key not in built:
            root = tmp_path_factory.mktemp(f"{family}-pair")
            config = target_config(family, tied=tied, kv_heads=kv_heads, **overrides)
            save_target(root / "target", config)
            vocab_size = None if draft_vocab is None else len(draft_vocab)
            drafter = draft_config(config, layers=draft_layers, block_size=block_size, draft_vocab_size=vocab_size)
            save_random_draft(root / "draft", drafter, draft_vocab=draft_vocab)
            built[key] = (str(root / "target"), str(root / "draft"))
        return built[key]

    return build


@pytest.fixture(scope="session")
def dflash2_pair(tmp_path_factory):
    """dflash2_pair(family, vocab_size=..., **drafter overrides) -> (target_dir, drafter_dir): a tiny
    random target and a DFlash 2 drafter for it in the published format, built once each."""
    built = {}

    def build(family="llama", vocab_size=512, **overrides):
        key = (family, vocab_size, json.dumps(overrides, sort_keys=True))
        if key not in built:
            root = tmp_path_factory.mktemp(f"{family}-dflash2")
            config = target_config(family, vocab_size=vocab_size)
            target = save_target(root / "target", config)
            built[key] = (str(target), write_published(root / "draft", published_config(config, **overrides)))
        return built[key]

    return build
