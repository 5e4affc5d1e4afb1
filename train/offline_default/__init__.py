"""The offline default's drafter, fast model and router probe, trained for SmolLM2-135M-Instruct on
its own answers to the shipped prompt set: `python -m train.offline_default` (smollm2.py)."""
