"""Loss curves of an ablation's arms, drawn from their ``metrics.jsonl`` (see rundir.py).

One figure, two panels sharing the x axis (tokens seen): the training MLM loss and the
held-out MLM loss, one colour per arm. Matplotlib's Agg backend, so it works headless.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

import matplotlib

matplotlib.use("Agg")  # headless: no display on cluster nodes or CI
import matplotlib.pyplot as plt  # noqa: E402

from common.atomic import atomic_path  # noqa: E402
from pretrain.training import rundir  # noqa: E402


def last_per_step(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Records sorted by ``step``, keeping the last one logged for each step.

    A run resumed from a checkpoint logs again the steps it redoes after the checkpoint;
    the later line is the one that belongs to the finished run.
    """
    by_step: Dict[int, Dict[str, Any]] = {}
    for r in records:
        if "step" in r:
            by_step[int(r["step"])] = r
    return [by_step[s] for s in sorted(by_step)]


def loss_series(run: Path) -> Tuple[List[Tuple[int, float]], List[Tuple[int, float]]]:
    """(train, eval) lists of (tokens_seen, MLM loss) of one run directory.

    Train uses ``mlm_loss`` (falling back to ``loss`` for a record with no per-term
    losses) so arms with and without a sentence-level objective are on the same scale. A
    run whose model has no MLM loss (ELECTRA logs ``gen_mlm_loss`` of its generator and
    ``disc_loss``) has no series. Empty lists if nothing was logged.
    """
    def mlm(r: Dict[str, Any]) -> Any:
        terms = [k for k in r if k.endswith("_loss") and k != "loss"]
        return r.get("mlm_loss", None if terms else r.get("loss"))

    train = [(int(r["tokens_seen"]), float(mlm(r))) for r in last_per_step(rundir.read_metrics(run, "train"))
             if mlm(r) is not None]
    evals = [(int(r["tokens_seen"]), float(r["mlm_loss"])) for r in last_per_step(rundir.read_metrics(run, "eval"))
             if r.get("mlm_loss") is not None]
    return train, evals


def plot_loss_curves(runs: Dict[str, Path], out: Path, title: str) -> Path:
    """Draw train and held-out MLM loss vs. tokens seen for each arm and save a PNG.

    Args:
        runs: arm name → run directory (arms with no metrics yet are listed as such).
        out: PNG path; written to a temporary name and renamed (atomic).
        title: figure title.
    Returns ``out``.
    """
    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    colours = plt.get_cmap("tab10")
    for i, (arm, run) in enumerate(runs.items()):
        train, evals = loss_series(run)
        c = colours(i % 10)
        logged = bool(rundir.read_metrics(run, "train"))
        label = arm if (train or evals) else f"{arm} (no MLM loss)" if logged else f"{arm} (no metrics yet)"
        if train:
            ax_t.plot(*zip(*train), color=c, lw=1.2, label=label)
        else:
            ax_t.plot([], [], color=c, label=label)
        if evals:
            ax_e.plot(*zip(*evals), color=c, lw=1.2, marker="o", ms=3, label=arm)
    ax_t.set_title("training MLM loss")
    ax_e.set_title("held-out MLM loss (shared validation masks)")
    for ax in (ax_t, ax_e):
        ax.set_xlabel("tokens seen")
        ax.set_ylabel("MLM loss (nats per masked token)")
        ax.grid(alpha=0.3)
    ax_t.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out
