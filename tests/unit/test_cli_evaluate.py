"""End-to-end `recostream evaluate` on a tiny event file written by the test."""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from core.config import RecommenderConfig
from core.similarity import SimilarityParams
from streams.cli import main
from streams.cli.evaluate import add_parser, recommender_config


@pytest.fixture
def event_file(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a JSON-lines (or CSV) event file of a small synthetic shop."""

    def make(fmt: str = "jsonl", users: int = 30, items: int = 60, events: int = 400,
             seed: int = 7, groups: bool = True) -> Path:
        rng = random.Random(seed)
        rows = []
        for t in range(events):
            u = rng.randrange(users)
            if groups:  # two taste groups, so that neighbours carry signal
                i = rng.randrange(items // 2) + (items // 2 if u % 2 else 0)
            else:
                i = rng.randrange(items)
            rows.append({"user_id": f"u{u}", "item_id": f"i{i}", "ts": 1_600_000_000 + t,
                         "type": "click", "value": float(1 + (u + i) % 5)})
        path = tmp_path / f"events.{fmt}"
        if fmt == "jsonl":
            path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
        else:
            header = "user_id,item_id,ts,type,value\n"
            path.write_text(header + "".join(
                f"{r['user_id']},{r['item_id']},{r['ts']},{r['type']},{r['value']}\n"
                for r in rows))
        return path

    return make


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main([*argv, "--json", "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    result = orjson.loads(out[0])
    assert isinstance(result, dict)
    return result


@pytest.mark.parametrize("similarity", ["cosine", "jaccard", "ease", "edlae"])
def test_evaluate_ranking_on_fixture(event_file: Callable[..., Path],
                                     capsys: pytest.CaptureFixture[str], similarity: str) -> None:
    result = run_json(capsys, "evaluate", "ranking", "--events", str(event_file()),
                      "--similarity", similarity)
    assert set(result) >= {"protocol", "k", "users", "ndcg_at_k", "map_at_k",
                           "precision_at_k", "recall_at_k", "seconds"}
    # 400 events over 30 users x 30 items repeat pairs: the split is drawn over the
    # unique pairs, and a few users have none held out.
    assert result["users"] == 26
    # Users who keep to one half of the catalogue get lists from that half: on the
    # same amount of data without taste groups the lists are no better than chance.
    shuffled = run_json(capsys, "evaluate", "ranking", "--events",
                        str(event_file(groups=False, seed=8)), "--similarity", similarity)
    assert isinstance(result["recall_at_k"], float) and isinstance(shuffled["recall_at_k"], float)
    assert result["recall_at_k"] > 1.5 * shuffled["recall_at_k"]


def test_evaluate_prequential_on_csv_fixture(event_file: Callable[..., Path],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(capsys, "evaluate", "prequential", "--events", str(event_file("csv")),
                      "--refresh-every", "50")
    assert set(result) >= {"protocol", "k", "events", "hr_at_k", "mrr_at_k", "seconds",
                           "events_per_second"}
    assert isinstance(result["events"], int) and result["events"] > 100
    shuffled = run_json(capsys, "evaluate", "prequential", "--events",
                        str(event_file("csv", groups=False, seed=8)), "--refresh-every", "50")
    assert isinstance(result["hr_at_k"], float) and isinstance(shuffled["hr_at_k"], float)
    assert result["hr_at_k"] > 1.4 * shuffled["hr_at_k"]


def test_evaluate_rating_on_fixture(event_file: Callable[..., Path],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(capsys, "evaluate", "rating", "--events", str(event_file()))
    assert set(result) >= {"protocol", "folds", "rmse", "mae", "seconds"}
    assert result["folds"] == 5
    assert isinstance(result["rmse"], float) and 0 < result["rmse"] < 2.5


def test_missing_file_is_one_line_error(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "ranking", "--events", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"recostream: error: events file {tmp_path / 'nope.jsonl'} does not exist"]


def test_corrupt_file_names_line_and_reason(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"user_id": "u", "item_id": "i", "ts": 5, "type": "view"}\n{"user_id": \n')
    assert main(["evaluate", "prequential", "--events", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ":2: invalid_json" in err[0]
    path.write_text('{"user_id": "u", "item_id": "i", "ts": 5, "type": "teleport"}\n')
    assert main(["evaluate", "prequential", "--events", str(path)]) == 2
    assert ":1: unknown_event_type" in capsys.readouterr().err


def test_bad_flag_value_is_one_line_error(event_file: Callable[..., Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "prequential", "--events", str(event_file()),
                 "--recency-decay", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "recostream: error: recency_decay must be in (0, 1]")


def test_ranking_chooses_ease_lambda_and_reports_bias(event_file: Callable[..., Path],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    chosen = run_json(capsys, "evaluate", "ranking", "--events", str(event_file()))
    assert chosen["ease_lambda_source"] == "validation"
    grid = chosen["validation_ndcg_by_lambda"]
    assert isinstance(grid, dict) and len(grid) == 7
    bias = chosen["bias"]
    assert isinstance(bias, dict)
    assert set(bias) == {"coverage", "exposure_gini", "novelty", "popularity_lift",
                         "accuracy_by_activity"}
    fixed = run_json(capsys, "evaluate", "ranking", "--events", str(event_file()),
                     "--ease-lambda", "250")
    assert fixed["ease_lambda"] == 250.0 and fixed["ease_lambda_source"] == "flag"


def test_ranking_with_edlae_chooses_its_lambda_and_takes_the_dropout_flag(
        event_file: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    chosen = run_json(capsys, "evaluate", "ranking", "--events", str(event_file()),
                      "--similarity", "edlae", "--edlae-dropout", "0.3")
    assert chosen["similarity"] == "edlae" and chosen["ease_lambda_source"] == "validation"
    assert len(chosen["validation_ndcg_by_lambda"]) == 7
    assert main(["evaluate", "ranking", "--events", str(event_file()), "--similarity", "edlae",
                 "--edlae-dropout", "1", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == (
        "recostream: error: edlae_dropout must be in [0, 1)")


def test_next_basket_reports_every_source_and_part(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    rows = []
    for week in range(3):
        for c in range(8):
            for slot in range(3):
                rows.append({"user_id": f"c{c}", "item_id": f"i{c % 2}{slot}",
                             "ts": 1_600_000_000 + week * 604_800 + c, "order_id": f"o{week}{c}"})
    path = tmp_path / "orders.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    result = run_json(capsys, "evaluate", "next-basket", "--events", str(path), "-k", "3")
    assert result["customers"] == 8 and result["repeat_share"] == 1.0
    sources = result["sources"]
    assert isinstance(sources, dict)
    assert set(sources) == {"default", "item_neighbours", "popularity", "buy_again"}
    assert sources["buy_again"]["all"]["hr_at_k"] == 1.0
    assert set(sources["default"]) == {"all", "repeat", "new", "bias"}


def test_next_basket_without_two_baskets_is_a_one_line_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "one.jsonl"
    path.write_bytes(orjson.dumps({"user_id": "u", "item_id": "i", "ts": 1_600_000_000,
                                   "order_id": "o"}))
    assert main(["evaluate", "next-basket", "--events", str(path), "--no-progress"]) == 2
    assert "two baskets" in capsys.readouterr().err


def test_prequential_plot_and_popularity(event_file: Callable[..., Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "hits.png"
    result = run_json(capsys, "evaluate", "prequential", "--events", str(event_file()),
                      "--refresh-every", "50", "--plot", str(png), "--window", "20")
    assert png.read_bytes().startswith(b"\x89PNG")
    new_items = result["new_items"]
    assert isinstance(new_items, dict) and set(new_items) == {"default", "popularity"}
    assert "repeats" not in result
    assert main(["evaluate", "prequential", "--events", str(event_file()), "--window", "0",
                 "--no-progress"]) == 2
    assert "--window" in capsys.readouterr().err


def test_customers_flag_samples_a_stable_subset(event_file: Callable[..., Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    a = run_json(capsys, "evaluate", "prequential", "--events", str(event_file()),
                 "--customers", "10")
    b = run_json(capsys, "evaluate", "prequential", "--events", str(event_file()),
                 "--customers", "10")
    assert a["sampled_customers"] == 10 and a["hr_at_k"] == b["hr_at_k"]
    assert main(["evaluate", "prequential", "--events", str(event_file()), "--customers", "0",
                 "--no-progress"]) == 2


def test_text_reports_tabulate_the_sources(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"user_id": f"c{c}", "item_id": f"i{c % 2}{s}", "ts": 1_600_000_000 + w * 604_800 + c,
             "order_id": f"o{w}{c}"} for w in range(3) for c in range(8) for s in range(3)]
    path = tmp_path / "orders.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    assert main(["evaluate", "next-basket", "--events", str(path), "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("source ") and "repeat nDCG" in line for line in lines)
    assert any(line.startswith("buy_again ") for line in lines)
    assert main(["evaluate", "prequential", "--events", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "repeats" in out and "buy_again" in out


def _parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["evaluate", *argv])


def test_ranking_gives_ease_the_unpruned_gram_matrix_and_the_stream_protocols_do_not() -> None:
    ranking = recommender_config(_parsed("ranking"))
    assert ranking.max_row_width == SimilarityParams.ease_max_items
    assert recommender_config(_parsed("ranking", "--max-row-width", "30")).max_row_width == 30
    for protocol in ("prequential", "next-basket"):
        config = recommender_config(_parsed(protocol))
        assert config.max_row_width == RecommenderConfig.max_row_width
