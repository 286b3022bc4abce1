"""Shared fixtures. Real data comes from $BERT_RECIPES_DATA (default ../shared/data next to
the repository); tests that need it skip with a reason only when it is absent, and .ci/run
fails before that can happen."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ENV = "BERT_RECIPES_DATA"

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def shared_data_dir() -> Path:
    return Path(os.environ.get(DATA_ENV, REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Root of the real data (nltk-corpora/, wikitext-2/, glue/)."""
    d = shared_data_dir()
    if not (d / "nltk-corpora").is_dir():
        pytest.skip(f"real data not found at {d} (set {DATA_ENV})")
    return d


@pytest.fixture(scope="session")
def nltk_dir(data_dir: Path) -> Path:
    return data_dir / "nltk-corpora"


@pytest.fixture(scope="session")
def configs_dir() -> Path:
    return REPO / "configs"
