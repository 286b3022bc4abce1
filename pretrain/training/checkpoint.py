"""Atomic DeepSpeed checkpoints with everything a bit-exact resume needs.

Layout under ``<run>/checkpoints/``::

    step-0000100/          a complete DeepSpeed checkpoint (model, optimizer, lr schedule)
        mp_rank_00_model_states.pt   ... + client state ``bert_recipes`` (see ``save``)
    latest                 text: the tag of the newest complete checkpoint

A checkpoint is written under ``.tmp-step-XXXXXXX`` by every rank, then — after a barrier —
rank 0 renames it to ``step-XXXXXXX`` and replaces ``latest`` atomically. ``latest`` only
ever names a renamed (complete) directory, and resuming reads only what ``latest`` names,
so a run killed mid-save resumes from the previous checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from common.configfile import merge_into
from common.errors import UserError
from pretrain.training.distributed import World, barrier
from pretrain.training.rundir import CHECKPOINTS

LATEST = "latest"
PREFIX = "step-"
CLIENT_KEY = "bert_recipes"
MODEL_STATES = "mp_rank_00_model_states.pt"

# Keys that may differ between a checkpoint's config and a resumed run's: they set how
# long, how often and where, not what is computed. ``micro_batch_size`` only splits the
# same global batch into other pieces (equal math, other float rounding and dropout draws).
RESUMABLE_KEYS = (
    "name",
    "run_dir",
    "data.output_dir",
    "data.num_workers",
    "train.max_steps",
    "train.micro_batch_size",
    "train.eval_every",
    "train.eval_max_batches",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.peak_flops",
)


def tag(step: int) -> str:
    """Directory name of the checkpoint after ``step`` optimizer steps."""
    return f"{PREFIX}{step:07d}"


def checkpoints_dir(run: Path) -> Path:
    """``<run>/checkpoints``: the directory DeepSpeed saves into and ``latest`` lives in."""
    return Path(run) / CHECKPOINTS


def _complete(d: Path) -> bool:
    return d.is_dir() and ((d / MODEL_STATES).is_file() or any(d.glob("*model_states.pt")))


def latest(run: Path) -> Optional[Path]:
    """The checkpoint ``latest`` names, or None if there is none.

    Raises UserError if ``latest`` names a directory that is missing or incomplete.
    """
    root = checkpoints_dir(run)
    f = root / LATEST
    if not f.is_file():
        return None
    d = root / f.read_text().strip()
    if not _complete(d):
        raise UserError(f"{f} names {d.name}, which is missing or incomplete; delete {f} to start over or restore the checkpoint")
    return d


def list_checkpoints(run: Path) -> List[Path]:
    """Complete ``step-*`` directories, oldest first."""
    root = checkpoints_dir(run)
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.name.startswith(PREFIX) and _complete(d))


def config_fingerprint(cfg_dict: Dict[str, Any]) -> str:
    """16 hex digits over the config keys that change a run (``RESUMABLE_KEYS`` excluded)."""
    flat = {k: v for k, v in flatten(cfg_dict).items() if k not in RESUMABLE_KEYS}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists stay values)."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(saved: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """``key: saved -> current`` for every run-changing key whose value differs. A key one
    side lacks counts as its RunConfig default, so a checkpoint written before a key was
    added resumes when the key keeps its default."""
    from omegaconf import OmegaConf

    from pretrain.config import RunConfig

    defaults = flatten(OmegaConf.to_container(OmegaConf.structured(RunConfig), resolve=False))
    a, b = flatten(saved), flatten(current)
    keys = sorted((set(a) | set(b)) - set(RESUMABLE_KEYS))

    def value(d: Dict[str, Any], k: str) -> Any:
        return d[k] if k in d else defaults.get(k, "<unset>")

    return [f"{k}: {value(a, k)!r} -> {value(b, k)!r}" for k in keys if value(a, k) != value(b, k)]


def rng_state() -> Dict[str, Any]:
    """This process's python, numpy and torch (CPU and CUDA) RNG states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(engine, run: Path, step: int, client_state: Dict[str, Any], keep: int, world: World) -> Path:
    """Write checkpoint ``step-XXXXXXX`` atomically; every rank must call it.

    ``client_state`` should hold what the trainer needs besides the engine (step, tokens
    seen, wall time, the resolved config and its fingerprint); the RNG states of every rank
    are gathered and added under ``"rng"`` (a list indexed by rank). DeepSpeed stores it
    in the model-states file under ``bert_recipes``. Afterwards only the newest ``keep``
    checkpoints remain. Returns the checkpoint directory.
    """
    root = checkpoints_dir(run)
    final = root / tag(step)
    tmp_tag = f".tmp-{tag(step)}"
    tmp = root / tmp_tag
    rngs: List[Any] = [None] * world.size
    if world.size > 1:
        torch.distributed.all_gather_object(rngs, rng_state())
    else:
        rngs[0] = rng_state()
    if world.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a save that was killed
    barrier()
    state = {**client_state, "rng": rngs}
    engine.save_checkpoint(str(root), tag=tmp_tag, client_state={CLIENT_KEY: state}, save_latest=False)
    barrier()
    if world.is_main:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = root / (LATEST + ".tmp")
        pointer.write_text(final.name + "\n")
        os.replace(pointer, root / LATEST)
        for old in list_checkpoints(run)[: -max(1, keep)]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load(engine, ckpt: Path, world: World) -> Dict[str, Any]:
    """Load checkpoint directory ``ckpt`` into ``engine`` (weights, optimizer, lr schedule)
    and restore this rank's RNG states. Returns the trainer's client state.

    Raises UserError if DeepSpeed cannot load it or it was written by another world size.
    """
    path, client = engine.load_checkpoint(str(ckpt.parent), tag=ckpt.name)
    if path is None or CLIENT_KEY not in (client or {}):
        raise UserError(f"cannot load checkpoint {ckpt}; delete it (and fix {ckpt.parent / LATEST}) or start another run_dir")
    state = client[CLIENT_KEY]
    if len(state["rng"]) != world.size:
        raise UserError(f"checkpoint {ckpt} was written by {len(state['rng'])} ranks; resume with the same number of ranks")
    set_rng_state(state["rng"][world.rank])
    return state


def read_client_state(ckpt: Path) -> Dict[str, Any]:
    """The trainer's client state of a checkpoint directory, without an engine."""
    files = [ckpt / MODEL_STATES] if (ckpt / MODEL_STATES).is_file() else sorted(ckpt.glob("*model_states.pt"))
    if not files:
        raise UserError(f"{ckpt} is not a checkpoint directory (no *model_states.pt)")
    # mmap: only the small client state is read, not the weights.
    sd = torch.load(files[0], map_location="cpu", weights_only=False, mmap=True)
    if CLIENT_KEY not in sd:
        raise UserError(f"{files[0]} was not written by pretrain.training.loop (no {CLIENT_KEY!r} client state)")
    return sd[CLIENT_KEY]


def _resolve_checkpoint(path: Path) -> Path:
    path = Path(path)
    if _complete(path):
        return path
    if (path / LATEST).is_file():  # a checkpoints/ directory
        d = path / (path / LATEST).read_text().strip()
        if _complete(d):
            return d
    found = latest(path)  # a run directory
    if found is None:
        raise UserError(f"no checkpoint in {path}: pass a run directory with checkpoints/latest or a checkpoints/step-* directory")
    return found


def load_model_state(ckpt_or_run_dir: str | Path) -> Tuple[Any, Dict[str, torch.Tensor]]:
    """The run config and float32 model weights of a checkpoint, for export tools.

    Args:
        ckpt_or_run_dir: a run directory (its latest checkpoint), its ``checkpoints/``
            directory, or one ``checkpoints/step-*`` directory.
    Returns:
        ``(RunConfig, state_dict)``: the config the checkpoint was trained with
        (vocab_size filled in) and ``build_model(cfg.model, cfg.objective.sentence)``'s
        ``state_dict()`` keys mapped to float32 CPU tensors. With bf16/fp16 training these
        are the optimizer's fp32 master weights, not the rounded module weights.
    Raises:
        UserError: no checkpoint there, or not one written by this trainer.
    """
    from pretrain.config import RunConfig
    from pretrain.models.encoder import build_model
    from pretrain.training.optim import param_groups

    ckpt = _resolve_checkpoint(Path(ckpt_or_run_dir))
    state = read_client_state(ckpt)
    cfg = merge_into(RunConfig, state["config"], where=f"{ckpt} client state")
    model = build_model(cfg.model, cfg.objective.sentence).float()
    if any(ckpt.glob("*zero_pp_rank_*optim_states.pt")):
        # ZeRO partitions (and flattens) the fp32 master weights; DeepSpeed's own tool
        # gathers them back by parameter name.
        from deepspeed.utils.zero_to_fp32 import (
            get_fp32_state_dict_from_zero_checkpoint,
        )

        sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        # The tied MLM decoder weight is stored once, under the embedding's name.
        if unexpected or any(k not in _tied_names(model) for k in missing):
            raise UserError(f"{ckpt} does not match the model its config builds (missing {missing[:3]}, unexpected {unexpected[:3]})")
    else:
        sd = torch.load(ckpt / MODEL_STATES, map_location="cpu", weights_only=False)
        opt = sd.get("optimizer") or {}
        if isinstance(opt, dict) and "fp32_groups" in opt:
            # bf16/fp16 without ZeRO: master weights are kept per param group, in the order
            # pretrain.training.optim.param_groups lists them.
            groups = param_groups(model, 0.0)
            with torch.no_grad():
                for g, masters in zip(groups, opt["fp32_groups"]):
                    if len(g["params"]) != len(masters):
                        raise UserError(f"{ckpt}: optimizer groups do not match the model its config builds")
                    for p, m in zip(g["params"], masters):
                        p.copy_(m.float())
        else:
            model.load_state_dict({k: v.float() for k, v in sd["module"].items()})
    return cfg, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _tied_names(model: torch.nn.Module) -> set:
    seen: Dict[int, str] = {}
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        else:
            seen[id(p)] = name
    return tied
