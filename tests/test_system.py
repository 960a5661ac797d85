"""The machine: HPO_THREADS caps torch's CPU threads."""

from __future__ import annotations

import pytest
import torch

from hpo.errors import ConfigError
from hpo.system import limit_threads


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_hpo_threads_caps_torch_threads(monkeypatch, threads):
    monkeypatch.setenv("HPO_THREADS", "1")
    limit_threads()
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("HPO_THREADS", "none")
    with pytest.raises(ConfigError, match="HPO_THREADS='none': expected a whole number >= 1"):
        limit_threads()
