"""`uv run dflash-serve`: an OpenAI-compatible server for a target with its DFlash drafter, the
fast model and the router.

With no model options it serves the offline default pair shipped in dflash/checkpoints.
"""

import argparse
import socket
import sys

import uvicorn

from adapters.errors import DFlashError

from ..cli import add_model_options, block_size_option, engine_from
from .app import create_app
from .protocol import model_names
from .scheduler import Scheduler

GRACE_S = 2.0  # on SIGTERM or SIGINT, open requests get this long to finish


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dflash-serve", description=__doc__.strip().split("\n\n")[0])
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    server.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0: any free one)")
    server.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    server.add_argument("--block-size", type=block_size_option,
                        help="draft block size of every request, or auto: chosen every step for the batch of requests "
                        "from their measured acceptance and step costs (default: the drafter's)")
    add_model_options(parser)
    return parser


class Server(uvicorn.Server):
    """uvicorn's server that closes the scheduler as it shuts down, so that open requests end
    within the grace period rather than hold the shutdown up."""

    def __init__(self, config: uvicorn.Config, scheduler: Scheduler):
        super().__init__(config)
        self.scheduler = scheduler

    async def shutdown(self, sockets=None) -> None:
        self.scheduler.close(GRACE_S)
        await super().shutdown(sockets)
        self.scheduler.join()


def make_server(args) -> Server:
    """Load the models (a DFlashError if they do not load) and build the server for `args`."""
    engine = engine_from(args)
    scheduler = Scheduler(engine, args.block_size)
    scheduler.start()
    app = create_app(scheduler, model_names(engine))
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=GRACE_S + 3)  # fmt: skip
    return Server(config, scheduler)


def listen(host: str, port: int) -> socket.socket:
    return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        listener = listen(args.host, args.port)  # before loading: a port in use fails at once
        server = make_server(args)
    except (DFlashError, OSError) as e:
        print(f"dflash-serve: error: {e}", file=sys.stderr)
        return 2
    names = ", ".join(model_names(server.scheduler.engine))
    print(f"dflash-serve: serving {names} on http://{args.host}:{listener.getsockname()[1]}", file=sys.stderr,
          flush=True)  # fmt: skip
    try:
        server.run(sockets=[listener])
    except KeyboardInterrupt:  # uvicorn raises a SIGINT again once it has shut down
        pass
    return 0
