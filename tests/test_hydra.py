"""Hyperparameters reach a Hydra app with exactly the value and type they have in the JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

hydra = pytest.importorskip("hydra")
from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from train_sweep import hydra_override, hydra_value  # noqa: E402

PARSER = OverridesParser.create()
HYDRA_APP = Path(__file__).resolve().parent / "hydra_app" / "train.py"


def through_hydra(value):
    """Parse `k=<rendered>` with Hydra's own parser and apply it to a config as Hydra does."""
    override = PARSER.parse_override(hydra_override("k", value))
    cfg = OmegaConf.create({"k": None})
    OmegaConf.update(cfg, "k", override.value(), merge=True, force_add=True)
    return OmegaConf.to_container(cfg, resolve=True)["k"]


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


TRICKY = [
    1, -3, 0, 10**12, 5e-06, 1.0, -2.5, 1e20, float("inf"), float("-inf"), True, False, None,
    [1, 2, 3], [], ["a b", "c,d"], [[1, 2], [3]], {"a": 1, "b": "x y"},
    "point_maze", "/data/run1", "./rel/path", "a b", "a,b", "it's", 'say "hi"', "k=v", "$HOME", "${oc.env:HOME}",
    "\\${x}", "[1,2]", "{a:1}", "123", "-5", "1.5", "1e3", "true", "False", "null", "NULL", "inf", "nan", "",
    " padded ", "tab\there", "back\\slash", "trailing\\", "quote'\\", "unicode ✓", "semi;colon", "hash#tag",
    "paren(x)", "~home", "a:b", "1_000", ".5", "0x10", "é",
]


@pytest.mark.parametrize("value", TRICKY, ids=repr)
def test_tricky_values_round_trip_through_hydra(value):
    assert same(through_hydra(value), value), hydra_value(value)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=("Cs", "Cc")), max_size=30))
def test_any_string_round_trips_through_hydra(text):
    assert same(through_hydra(text), text), hydra_value(text)


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False) | st.integers(-(10**20), 10**20))
def test_any_number_round_trips_through_hydra(number):
    assert same(through_hydra(number), number), hydra_value(number)


@pytest.mark.parametrize(
    "value,bare",
    [("point_maze", "point_maze"), ("/data/run1", "/data/run1"), ("data/x.csv", "data/x.csv"), (5e-06, "5e-06"),
     (1.0, "1.0"), (-3, "-3"), (True, "true"), (None, "null"), ([1, 2], "[1,2]"), ("a b", "'a b'"),
     ("123", "'123'"), ("true", "'true'"), ("", "''"), ("it's", "'it\\'s'")],
)
def test_plain_values_go_bare_others_quoted(value, bare):
    assert hydra_value(value) == bare


def test_values_reach_a_real_hydra_app_through_the_cli(sweep):
    entries = [
        {"i": -3, "f": 5e-06, "b": True, "n": None, "s": "a b,c='d' $x ${y} [z]", "lst": [1, "two", 3.0],
         "d": {"x": 1}, "path": "/data/run1", "training.epochs": 50, "training.bisim_lr": 1.0},
        {"i": 7, "f": 1.0, "b": False, "s": "123", "lst": [], "path": "", "training.epochs": "true"},
        {"s": "", "f": -1e-10, "training.bisim_lr": "null"},
    ]
    sweep.config(entries)
    p = sweep.run("--command", f"python {HYDRA_APP}")
    assert p.returncode == 0, p.stdout + p.stderr
    for entry, result in zip(entries, sweep.results()):
        got = json.loads((Path(result["run_dir"]) / "cfg.json").read_text())
        for key, value in entry.items():
            node = got
            for part in key.split("."):
                node = node[part]
            received, type_name = node
            assert same(received, value), (key, value, received)
            assert type_name == type(value).__name__, (key, value, type_name)
