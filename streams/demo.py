"""``recostream demo``: what ``make demo`` runs.

Until the live Kafka demo lands, the demo fetches MovieLens-100k and runs the
offline protocols through the same core the stream uses, printing the figures.
"""

from __future__ import annotations

import argparse

from streams.cli import main as cli_main


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("demo", help="fetch ML-100k and evaluate the engine on it")
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    for protocol in ("ranking", "prequential", "rating"):
        print(f"== recostream evaluate {protocol} --dataset ml-100k", flush=True)
        status = cli_main(["evaluate", protocol, "--dataset", "ml-100k"])
        if status:
            return status
    return 0
