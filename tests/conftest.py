"""Shared fixtures. Real data comes from $BERT_RECIPES_DATA (default ../shared/data next to
the repository); tests that need it skip with a reason only when it is absent, and .ci/run
fails before that can happen."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the module's training runs (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): tiny models gain little from a second thread,
    and OpenMP threads spin badly when the suite shares the cores with other jobs (or with a
    second rank). train() honours OMP_NUM_THREADS, subprocesses inherit it."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(threads)
