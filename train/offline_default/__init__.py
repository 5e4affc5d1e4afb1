"""The offline default models shipped in dflash/checkpoints/ (an expert and a fast LM, and the
expert's drafter), built from text that ships with Python: `python -m train.offline_default`."""
