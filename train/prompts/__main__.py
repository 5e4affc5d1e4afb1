"""Rewrite the shipped prompt file from the templates: `uv run python -m train.prompts`."""

from . import build_prompts, write_prompts

if __name__ == "__main__":
    print(f"wrote {write_prompts(build_prompts())}")
