class DFlashError(ValueError):
    """Bad input (models, files, prompts, options): the CLI prints the message, not a traceback."""
