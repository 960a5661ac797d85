"""The package's layer contract (bench/layers.py): every import points down the layers, no
cycle, no module past 400 lines, and storage knows nothing of study files, data or training."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import layers  # noqa: E402


@pytest.fixture(scope="module")
def edges() -> dict[str, set[str]]:
    return layers.graph()


def test_no_module_imports_a_layer_above_its_own(edges):
    assert layers.upward(edges) == []


def test_no_import_cycle(edges):
    assert layers.cycles(edges) == []


def test_every_module_is_placed_in_a_layer_by_name(edges):
    """A new top-level module must be named in LAYERS, or it lands on top unchecked."""
    unplaced = [m for m in edges if m not in ("hpo", "hpo.__main__")
                and not any(m == n or m.startswith(n + ".") for _, names in layers.LAYERS for n in names if n != "hpo")]
    assert unplaced == []


def test_storage_imports_only_the_foundations(edges):
    foundations = layers.LAYERS[0][1]
    outside = sorted((a, b) for a, targets in edges.items() if a.startswith("hpo.storage") for b in targets
                     if not b.startswith("hpo.storage") and not any(b == f or b.startswith(f + ".") for f in foundations))
    assert outside == []


def test_no_module_is_over_400_lines():
    assert [(name, n) for n, name in layers.sizes() if n > 400] == []


def test_the_contract_catches_an_upward_import(edges):
    """The check itself: a data module importing the study layer is reported."""
    broken = {**edges, "hpo.data.table": edges["hpo.data.table"] | {"hpo.study"}}
    assert layers.upward(broken) == [("hpo.data.table", "hpo.study")]
    cyclic = {**edges, "hpo.data.table": edges["hpo.data.table"] | {"hpo.data.cache"}}
    assert ["hpo.data.cache", "hpo.data.table"] in layers.cycles(cyclic)
