"""``recostream worker``: what it refuses before starting anything."""

from __future__ import annotations

import sys

import pytest

from streams.cli import main


def test_a_missing_uvloop_is_one_line_that_says_how_to_go_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # ``import uvloop`` raises ImportError
    monkeypatch.delitem(sys.modules, "mode.loop.uvloop", raising=False)
    monkeypatch.delenv("RECOSTREAM_EVENT_LOOP", raising=False)
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recostream: error: RECOSTREAM_EVENT_LOOP=uvloop: ")
    assert "RECOSTREAM_EVENT_LOOP=asyncio" in err
    assert err.count("\n") == 1
