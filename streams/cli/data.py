"""``recostream data fetch|list``: the evaluation data sets in the cache."""

from __future__ import annotations

import argparse

from streams.devtools.datasets import DATASETS, cached_path, dataset_files


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("data", help="fetch and inspect the evaluation data sets")
    data_sub = parser.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser("fetch", help="download a data set into the cache")
    fetch.add_argument("name", choices=sorted(DATASETS))
    fetch.set_defaults(func=_cmd_fetch)
    listing = data_sub.add_parser("list", help="list the data sets and where they are cached")
    listing.set_defaults(func=_cmd_list)


def _cmd_fetch(args: argparse.Namespace) -> int:
    for base, path in dataset_files(args.name).items():
        print(f"{args.name}: {base} -> {path}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    for source in DATASETS.values():
        cached = all(cached_path(source, f).is_file() for f in source.files)
        state = "cached" if cached else "not cached"
        print(f"{source.name:17} {source.requirement:26} {state:10} {source.description}")
        print(f"{'':17} licence: {source.licence}")
    return 0
