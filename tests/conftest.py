"""Shared pytest fixtures.

``shared_twix`` gives the folder of real Siemens files in ../shared/data/twix (relative to the
repository root, or $NARECON_SHARED_DATA); tests that need it skip with the reason when absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _private_dcf_cache(tmp_path_factory):
    """Density weights computed by tests go to a temporary cache, never into the user's ~/.cache/narecon."""
    if "NARECON_CACHE_DIR" not in os.environ:
        os.environ["NARECON_CACHE_DIR"] = str(tmp_path_factory.mktemp("narecon-cache"))
    yield


def shared_twix_dir() -> Path | None:
    env = os.environ.get("NARECON_SHARED_DATA")
    cand = [Path(env) / "twix"] if env else []
    cand.append(REPO.parent / "shared" / "data" / "twix")
    for c in cand:
        if c.is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def shared_twix() -> Path:
    d = shared_twix_dir()
    if d is None:
        pytest.skip("real twix files absent: ../shared/data/twix not found (set NARECON_SHARED_DATA)")
    return d


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
