"""`uv run dflash-serve`: an OpenAI-compatible server for a target with its DFlash drafter, the
fast model and the router.

With no model options it serves the offline default: SmolLM2-135M-Instruct (dflash/presets.py), the
drafter and the fast model shipped for it in dflash/checkpoints.
"""

import argparse
import socket
import sys
import threading
import time

import uvicorn

from adapters.errors import DFlashError

from ..commands import BLOCK_SIZE_DEFAULT, add_model_options, block_size_option, engine_from, run_command
from ..prefix_cache import DEFAULT_GB as DEFAULT_PREFIX_CACHE_GB
from .app import create_app
from .protocol import model_names
from .scheduler import Scheduler

GRACE_S = 2.0  # on SIGTERM or SIGINT, open requests get this long to finish
# Room for a long-context prompt (262k token ids as JSON are about 2 MB) while a body stays
# small next to the memory and time a server has for each request.
DEFAULT_MAX_BODY_MB = 4.0


def port_number(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535, got {port}")
    return port


def size_above_zero(text: str, unit: str) -> float:
    size = float(text)
    if not 0 < size < float("inf"):
        raise argparse.ArgumentTypeError(f"a size in {unit} is a number above 0, got {text}")
    return size


def megabytes(text: str) -> float:
    return size_above_zero(text, "megabytes")


def gigabytes_or_off(text: str) -> float:
    return 0.0 if float(text) == 0 else size_above_zero(text, "gigabytes (or 0: off)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dflash-serve", description=__doc__.strip().split("\n\n")[0])
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    server.add_argument("--port", type=port_number, default=8000,
                        help="port to listen on (default 8000; 0: any free one)")  # fmt: skip
    server.add_argument("--max-body-mb", type=megabytes, default=DEFAULT_MAX_BODY_MB, metavar="MB",
                        help="refuse request bodies over this many megabytes (10^6 bytes) before reading them "
                        f"(default {DEFAULT_MAX_BODY_MB})")  # fmt: skip
    server.add_argument("--prefix-cache-gb", type=gigabytes_or_off, default=DEFAULT_PREFIX_CACHE_GB, metavar="GB",
                        help="keep the caches of finished requests, at most this many gigabytes (10^9 bytes), so that "
                        "a request sharing a prefix with an earlier one (the next turn of a chat, an agent's "
                        f"system prompt) prefills only the rest (default {DEFAULT_PREFIX_CACHE_GB}; 0: off)")
    server.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    server.add_argument("--block-size", type=block_size_option,
                        help="draft block size of every request, or auto: chosen every step for the batch of requests "
                        f"from their measured acceptance and step costs ({BLOCK_SIZE_DEFAULT})")
    add_model_options(parser)
    return parser


class Server(uvicorn.Server):
    """uvicorn's server that closes the scheduler as it shuts down, so that open requests end
    within the grace period rather than hold the shutdown up."""

    def __init__(self, config: uvicorn.Config, scheduler: Scheduler):
        super().__init__(config)
        self.scheduler = scheduler

    def start_in_thread(self, listener: socket.socket) -> threading.Thread:
        """Serve on `listener` from a daemon thread, to embed the server in a program (the tests
        do); returns once it takes connections. Stop it with `should_exit = True`."""
        thread = threading.Thread(target=self.run, kwargs={"sockets": [listener]}, daemon=True)
        thread.start()
        while not self.started and thread.is_alive():
            time.sleep(0.01)
        return thread

    async def shutdown(self, sockets=None) -> None:
        self.scheduler.close(GRACE_S)
        await super().shutdown(sockets)
        self.scheduler.join()


def make_server(args) -> Server:
    """Load the models (a DFlashError if they do not load) and build the server for `args`."""
    engine = engine_from(args, block_size=args.block_size, prefix_cache_gb=args.prefix_cache_gb)
    scheduler = Scheduler(engine)
    scheduler.start()
    app = create_app(scheduler, model_names(engine), int(args.max_body_mb * 1e6))
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=GRACE_S + 3)  # fmt: skip
    return Server(config, scheduler)


def listen(host: str, port: int) -> socket.socket:
    return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)


def serve(args) -> int:
    listener = listen(args.host, args.port)  # before loading: a port in use fails at once
    server = make_server(args)
    names = ", ".join(model_names(server.scheduler.engine))
    print(f"dflash-serve: serving {names} on http://{args.host}:{listener.getsockname()[1]}", file=sys.stderr,
          flush=True)  # fmt: skip
    try:
        server.run(sockets=[listener])
    except KeyboardInterrupt:  # uvicorn raises a SIGINT again once it has shut down
        pass
    return 0


def main(argv=None) -> int:
    return run_command("dflash-serve", lambda: serve(build_parser().parse_args(argv)), errors=(DFlashError, OSError))
