"""``evertune serve``: the answer service (MLflow's scoring server for the champion, plus ``/ask``).

evertune serve                      127.0.0.1:$EVERTUNE_SERVE_PORT (default 8090), champion + production KB
evertune serve --port 9000
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` command to the ``evertune`` CLI."""
    from evertune.serving.server import HOST

    serve = subparsers.add_parser("serve", help="serve the champion over HTTP (/invocations, /ask, /ping)")
    serve.add_argument("--params", default=None, help="params file (default: $EVERTUNE_PARAMS or ./params.yaml)")
    serve.add_argument("--host", default=HOST, help=f"address to bind (default {HOST}: this machine only)")
    serve.add_argument("--port", type=int, default=None, help="port (default: $EVERTUNE_SERVE_PORT or 8090)")
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    import logging

    from evertune.config import load_params
    from evertune.serving.server import serve_forever
    from evertune.settings import get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_forever(load_params(args.params), get_settings(), host=args.host, port=args.port)
    return 0
