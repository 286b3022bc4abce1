"""Shared fixtures. Real data comes from $BERT_RECIPES_DATA (default ../shared/data next to
the repository); tests that need it skip with a reason only when it is absent, and .ci/run
fails before that can happen.

Tests marked ``slurm`` submit to a local Slurm cluster (slurm/local-cluster.sh), which they
start — and, as root, apt-install — when it is not running. That is never done to a
machine unasked: they run only with ``--slurm`` or ``BERT_RECIPES_SLURM=1`` (.ci/run sets
it) and are skipped, with that reason, otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA_ENV = "BERT_RECIPES_DATA"
SLURM_ENV = "BERT_RECIPES_SLURM"
SLURM_SKIP_REASON = (
    f"Slurm tests run only when asked for ({SLURM_ENV}=1 or --slurm; .ci/run sets it): they start a "
    "local Slurm cluster, apt-installing it when run as root"
)

os.environ.setdefault("DS_ACCELERATOR", "cpu")
# The product's default is ../shared/data relative to the working directory; tests run
# commands from temporary directories and copies of the repository, so they get the default
# as an absolute path (next to this repository) unless the variable is set.
os.environ.setdefault(DATA_ENV, str((REPO.parent / "shared" / "data").resolve()))

# What torchrun sets for each worker, and what an in-process train() sets for its world of
# one (whose MASTER_PORT stays listened on): a child process that inherited them would try
# to join that world instead of making its own.
LAUNCHER_VARS = frozenset({"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                           "MASTER_PORT", "TORCHELASTIC_RUN_ID"})


# A RoBERTa small enough to train in seconds on a CPU (overrides of configs/recipe/roberta.yaml):
# 2 layers of width 64 on 30 documents, global batch 16 in micro batches of 8.
TINY_ROBERTA = [
    "model.vocab_size=null", "model.hidden_size=64", "model.num_hidden_layers=2", "model.num_attention_heads=2",
    "model.intermediate_size=128", "data.max_documents=30", "data.max_seq_length=64", "data.tokenizer.vocab_size=1000",
    "train.global_batch_size=16", "train.micro_batch_size=8", "train.optimizer.lr=2e-3",
    "train.schedule.warmup_steps=3",
]


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a ``pretrain`` (or torchrun) subprocess: this process's, read now,
    without ``LAUNCHER_VARS``, then ``extra`` set on top."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(extra)
    return env


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slurm", action="store_true", default=False,
                     help=f"run the tests marked slurm (starts a local Slurm cluster); same as {SLURM_ENV}=1")


def pytest_configure(config: pytest.Config) -> None:
    # tests/slurm_cluster.py reads the variable before it starts anything.
    if config.getoption("--slurm"):
        os.environ[SLURM_ENV] = "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if os.environ.get(SLURM_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=SLURM_SKIP_REASON)
    for item in items:
        if "slurm" in item.keywords:
            item.add_marker(skip)


def write_finished_run(run: Path, cfg, state_dict: dict, data_dir: Path) -> Path:
    """Make ``run`` a run directory as a finished ``pretrain train`` leaves it: one checkpoint
    ``checkpoints/step-0000010`` holding ``state_dict`` (the model's) and the run config
    ``cfg`` (with its manifest), ``checkpoints/latest`` naming it, and ``summary.json``
    (status done; the shards, and so the tokenizer, at ``data_dir``). Returns the
    checkpoint directory."""
    import json

    from pretrain.config import to_dict
    from pretrain.training import manifest
    from pretrain.training.checkpoint import LATEST, MODEL_STATES, STATE

    ckpt = run / "checkpoints" / "step-0000010"
    ckpt.mkdir(parents=True)
    torch.save({"module": state_dict}, ckpt / MODEL_STATES)
    (ckpt / STATE).write_text(json.dumps({"config": to_dict(cfg), "rng": []}))
    manifest.write(ckpt)
    (run / "checkpoints" / LATEST).write_text(ckpt.name + "\n")
    (run / "summary.json").write_text(json.dumps({"status": "done", "data_dir": str(data_dir)}))
    return ckpt


def padded_ids(vocab_size: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows of 14 random ids in ``[5, vocab_size)`` (seed 7), the second padded from
    position 9 and the third from 4 with ``pad_id``: ``(input_ids, attention_mask)``, int64
    ``[3, 14]`` each (mask 1 = token, 0 = padding)."""
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(5, vocab_size, (3, 14), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = pad_id
    return ids, mask


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with N(0, 0.05²) noise (seed 11) added to every parameter, in eval mode:
    fresh inits leave biases 0 and LayerNorms 1, which would hide swapped weight names in a
    conversion test."""
    torch.manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


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
