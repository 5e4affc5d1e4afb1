import pytest

import dflash  # noqa: F401  (OpenBLAS before mlx)
from tests.helpers import draft_config, save_random_draft, save_target, target_config


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
