"""The README's settings table documents every RECOSTREAM_* variable the worker reads."""

from __future__ import annotations

import re
from pathlib import Path

from streams.runtime.settings import ENVIRONMENT, Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _documented() -> dict[str, str]:
    rows = re.findall(r"^\| `(RECOSTREAM_[A-Z_]+)` \| ([^|]+) \|", README.read_text(), re.M)
    return {name: default.strip().strip("`") for name, default in rows}


def test_every_setting_is_documented_with_its_default() -> None:
    documented = _documented()
    defaults = Settings().to_env()
    assert set(documented) == {s.variable for s in ENVIRONMENT}
    for variable, default in defaults.items():
        shown = documented[variable]
        if shown == "(none)":
            assert default == "", variable
        elif variable == "RECOSTREAM_DATA_DIR":
            assert default.endswith(shown.removeprefix("~")), variable
        elif variable == "RECOSTREAM_WEIGHTS":
            assert Settings.from_env({variable: shown}) == Settings(), variable
        else:
            assert shown == default or float(shown) == float(default), variable
