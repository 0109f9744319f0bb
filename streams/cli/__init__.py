"""The ``recostream`` command line.

Each sub-command lives in its own module and registers itself through
:data:`COMMANDS`; modules are imported lazily so that ``recostream evaluate``
never pays for importing Faust.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from streams.errors import CliError

# name -> "module:function"; the function receives the sub-parsers action and adds
# its own parser, setting ``func`` to a callable taking the parsed namespace.
COMMANDS: dict[str, str] = {
    "data": "streams.cli.data:add_parser",
    "evaluate": "streams.cli.evaluate:add_parser",
    "churn": "streams.cli.churn:add_parser",
    "kafka": "streams.cli.kafka:add_parser",
    "demo": "streams.cli.demo:add_parser",
    "worker": "streams.cli.worker:add_parser",
    "produce": "streams.cli.produce:add_parser",
    "tail": "streams.cli.tail:add_parser",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recostream",
        description="Real-time recommendations and churn alerts on Kafka.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for target in COMMANDS.values():
        module_name, function_name = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # a command whose module is not built yet
        getattr(module, function_name)(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
    except CliError as exc:
        print(f"recostream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recostream: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`recostream data list | head`): nothing left to say,
        # and the interpreter's own flush of stdout must not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(status or 0)

