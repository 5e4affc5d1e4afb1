"""`dflash-serve`: OpenAI's chat and text completions over the engine.

`app.py` has the endpoints, `protocol.py` the OpenAI request and reply shapes, `scheduler.py` the
one worker thread that runs every request's decode steps in turn, and `cli.py` the command.
"""

from .cli import main

__all__ = ["main"]
