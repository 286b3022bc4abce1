"""Atomic, verifiable DeepSpeed checkpoints with everything a bit-exact resume needs,
loaded without running code from them.

Layout under ``<run>/checkpoints/``::

    step-0000100/                    one complete checkpoint
        mp_rank_00_model_states.pt   DeepSpeed: module weights, optimizer, lr schedule
        *optim_states.pt             DeepSpeed, with ZeRO: each rank's optimizer partition
        trainer_state.json           the trainer's state: step, tokens, log window, last eval,
                                     config, and every rank's RNG states (``save``)
        manifest.json                written last: every file's bytes and sha256
    latest                           text: the tag of the newest complete checkpoint

Saving: rank 0 writes ``trainer_state.json`` and every rank its DeepSpeed part under
``.tmp-step-XXXXXXX``; after a barrier the ranks hash a share of the files each, rank 0
writes the manifest, renames the directory to ``step-XXXXXXX`` and replaces ``latest``
atomically. A ``step-*`` directory is valid only if its manifest
matches its files (``pretrain.training.manifest``), so a save cut off by a kill or a full
disk is never taken for a checkpoint.

Loading never unpickles code: the trainer's state is JSON, and DeepSpeed's ``.pt`` files
are read with ``torch.load(weights_only=True)`` (``pretrain.training.safeload``), also
inside DeepSpeed. Before any of it, the manifest is checked (``resume_point``,
``load_model_state``): a damaged checkpoint is named, and ``--resume`` falls back to the
newest intact one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from common.atomic import write_json_atomic, write_text_atomic
from common.configfile import merge_into
from common.diskspace import disk_full_error, is_disk_full
from common.errors import UserError
from pretrain.training import manifest, safeload
from pretrain.training.distributed import World, all_reduce_sum, barrier, broadcast_object
from pretrain.training.rundir import CHECKPOINTS, LATEST, METRICS, PREFIX, SUMMARY, run_of

STATE = "trainer_state.json"
MODEL_STATES = "mp_rank_00_model_states.pt"
# Bytes per parameter of a first checkpoint, for the space a full disk lacks: fp32 weights
# or master weights (4) + Adam/LAMB moments (8) + a 16-bit module copy (2) + slack.
_BYTES_PER_PARAMETER = 16

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
    # Cheap: a renamed directory always has its manifest; ``manifest.problem`` checks it.
    return d.is_dir() and (d / manifest.MANIFEST).is_file()


def latest(run: Path) -> Optional[Path]:
    """The checkpoint ``latest`` names, or None if there is no ``latest``.

    Raises UserError if ``latest`` names a directory that is missing or has no manifest.
    (Its files are not hashed here; ``resume_point`` and ``load_model_state`` do that.)
    """
    root = checkpoints_dir(run)
    f = root / LATEST
    if not f.is_file():
        return None
    d = root / f.read_text().strip()
    if not _complete(d):
        raise UserError(f"{f} names {d.name}, which is missing or incomplete; `pretrain train --resume` "
                        "falls back to the newest intact checkpoint")
    return d


def list_checkpoints(run: Path) -> List[Path]:
    """``step-*`` directories with a manifest, oldest first."""
    return [d for d in _step_dirs(run) if _complete(d)]


def _step_dirs(run: Path) -> List[Path]:
    root = checkpoints_dir(run)
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.name.startswith(PREFIX) and d.is_dir())


def _step_of(d: Path) -> int:
    try:
        return int(d.name[len(PREFIX):])
    except ValueError:
        return -1


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
    """This process's python, numpy and torch (CPU and CUDA) RNG states, as JSON-able
    values (lists of ints; torch's byte states base64), restored exactly by
    ``set_rng_state``."""
    py_version, py_internal, py_gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned (after a trip through JSON)."""
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_internal), py_gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def _expected_bytes(run: Path, engine) -> int:
    """About how many bytes the next checkpoint takes: the newest one's size, or
    ``_BYTES_PER_PARAMETER`` per parameter before the first."""
    for d in reversed(list_checkpoints(run)):
        m = manifest.read(d)
        if m and m.get("bytes"):
            return int(m["bytes"])
    n = sum(int(getattr(p, "ds_numel", p.numel())) for p in engine.module.parameters())
    return _BYTES_PER_PARAMETER * n


def save(engine, run: Path, step: int, client_state: Dict[str, Any], keep: int, world: World) -> Path:
    """Write checkpoint ``step-XXXXXXX`` atomically; every rank must call it.

    ``client_state`` should hold what the trainer needs besides the engine (step, tokens
    seen, wall time, the resolved config and its fingerprint), as JSON-able values; it goes
    to ``trainer_state.json`` with every rank's RNG states under ``"rng"`` (a list indexed
    by rank). Afterwards only the newest ``keep`` checkpoints remain. Returns the
    checkpoint directory.

    Raises:
        UserError: the disk filled up (on any rank): names the directory, the free space
            and the space needed; the partial checkpoint is deleted and the previous ones
            are untouched. Every rank raises, after the same collectives.
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
    needed = _expected_bytes(run, engine)
    failure: Optional[Tuple[Path, BaseException]] = None
    if world.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a save that was killed
        tmp.mkdir()
        try:
            write_json_atomic(tmp / STATE, {**client_state, "rng": rngs})
        except (OSError, UserError) as e:  # UserError: a full disk
            failure = (tmp / STATE, e)
    barrier()
    safeload.secure_engine(engine)
    writer = engine.checkpoint_engine
    writer.failures.clear()
    # Write failures are collected by the checkpoint engine, not raised, so every rank goes
    # through DeepSpeed's collectives and reaches the vote below.
    engine.save_checkpoint(str(root), tag=tmp_tag, client_state={}, save_latest=False)
    barrier()
    failure = failure or (writer.failures[0] if writer.failures else None)
    # The manifest: every rank hashes a share of the files (all ranks see them: the run
    # directory is on a shared file system), rank 0 writes it.
    listing = broadcast_object(manifest.files(tmp) if world.is_main else None)
    try:
        share = manifest.entries(tmp, listing[world.rank::world.size])
    except OSError as e:
        share, failure = {}, failure or (tmp, e)
    shares: List[Any] = [None] * world.size
    if world.size > 1:
        torch.distributed.all_gather_object(shares, share)
    else:
        shares[0] = share
    if world.is_main and failure is None:
        try:
            manifest.write(tmp, {rel: entry for part in shares for rel, entry in part.items()})
        except (OSError, UserError) as e:  # UserError: a full disk
            failure = (tmp / manifest.MANIFEST, e)
    failed = all_reduce_sum(torch.tensor([float(failure is not None)], dtype=torch.float64)).item() > 0
    if failed:
        barrier()
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        barrier()
        previous = list_checkpoints(run)
        then = (f", then rerun with --resume (it resumes from {previous[-1].name})" if previous
                else ", then rerun (no checkpoint of this run was complete)")
        if failure is None:
            raise UserError(f"another rank could not write its part of checkpoint {final}; see its error")
        path, e = failure
        if isinstance(e, UserError) or is_disk_full(e, path, needed):
            raise disk_full_error(root, needed, then) from None
        raise e
    if world.is_main:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_text_atomic(root / LATEST, final.name + "\n")
        for old in list_checkpoints(run)[: -max(1, keep)]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def has_run_files(run: Path) -> List[str]:
    """Names of what in ``run`` a fresh start would overwrite: ``step-*`` checkpoints (intact
    or not), ``latest``, a non-empty metrics.jsonl, summary.json."""
    run = Path(run)
    found = []
    steps = _step_dirs(run)
    if steps:
        found.append(f"{len(steps)} checkpoint(s) ({steps[-1].name} the newest)")
    elif (checkpoints_dir(run) / LATEST).is_file():
        found.append(f"{CHECKPOINTS}/{LATEST}")
    metrics = run / METRICS
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append(METRICS)
    if (run / SUMMARY).is_file():
        found.append(SUMMARY)
    return found


def newest_intact(run: Path, say=print) -> Tuple[Optional[Path], List[str]]:
    """The checkpoint to resume ``run`` from and what was wrong with the ones passed over.

    Candidates in order: the one ``latest`` names, then every other ``step-*`` directory,
    newest first. The first whose manifest matches its files (sizes and sha256) wins. If
    it is not the one ``latest`` names (damaged ones passed over, or no ``latest``), one
    line through ``say`` names what was wrong and the checkpoint used. Returns
    ``(checkpoint or None, ["checkpoint <dir> is damaged: <why>", ...])``.
    """
    root = checkpoints_dir(run)
    steps = sorted(_step_dirs(run), key=_step_of, reverse=True)
    pointer = root / LATEST
    named = root / pointer.read_text().strip() if pointer.is_file() else None
    order = ([named] if named is not None else []) + [d for d in steps if d != named]
    problems = []
    for d in order:
        why = manifest.problem(d)
        if why is None:
            if problems or named is None:
                reason = ("checkpoints/latest is missing" if named is None and not problems
                          else "; ".join(problems))
                say(f"warning: {reason}; resuming from {d}, the newest intact checkpoint")
            return d, problems
        problems.append(f"checkpoint {d} is damaged: {why}")
    return None, problems


def resume_point(run: Path, resume: bool, world: World) -> Optional[Path]:
    """Where a run starts: the checkpoint to resume from, or None for a fresh start. Rank 0
    decides (reading and hashing the files once) and every rank gets its answer.

    - ``resume=False``: None, unless ``run`` already holds a run (``has_run_files``): then
      UserError naming ``--resume`` and a new ``run_dir`` — a fresh start never
      overwrites checkpoints or metrics.
    - ``resume=True``: ``newest_intact``: ``latest`` if intact, else the newest intact
      checkpoint (each damaged one named in one line); with no checkpoint at all, None
      (a fresh start, said so). Checkpoints that are all damaged are a UserError: nothing
      is overwritten.
    """
    answer: Tuple[Optional[str], Optional[str]] = (None, None)  # (checkpoint, error)
    if world.is_main:
        answer = _decide(Path(run), resume)
    path, error = broadcast_object(answer)
    if error is not None:
        raise UserError(error)
    return Path(path) if path is not None else None


def _decide(run: Path, resume: bool) -> Tuple[Optional[str], Optional[str]]:
    if not resume:
        found = has_run_files(run)
        if found:
            return None, (f"{run} already holds a run ({', '.join(found)}); pass --resume to continue it, "
                          "or set run_dir to a new directory to start another")
        return None, None
    ckpt, problems = newest_intact(run, say=lambda line: print(line, file=sys.stderr, flush=True))
    if ckpt is not None:
        return str(ckpt), None
    if problems:
        return None, (f"no intact checkpoint to resume {run} from ({problems[0]}"
                      f"{f' and {len(problems) - 1} more' if len(problems) > 1 else ''}); nothing was overwritten: "
                      "restore a checkpoint, or set run_dir to a new directory")
    print(f"no checkpoint in {checkpoints_dir(run)}; starting fresh", flush=True)
    return None, None


def load(engine, ckpt: Path, world: World) -> Dict[str, Any]:
    """Load checkpoint directory ``ckpt`` into ``engine`` (weights, optimizer, lr schedule)
    and restore this rank's RNG states. Returns the trainer's state (``trainer_state.json``).

    Every ``.pt`` file is read weights-only (``safeload``), DeepSpeed's reads included.
    Raises UserError if it cannot be loaded, holds code (``UnsafeCheckpoint``) or was
    written by another world size.
    """
    state = read_client_state(ckpt)
    if len(state["rng"]) != world.size:
        raise UserError(f"checkpoint {ckpt} was written by {len(state['rng'])} ranks; resume with the same number of ranks")
    safeload.secure_engine(engine)
    with safeload.tensors_only():
        path, _ = engine.load_checkpoint(str(ckpt.parent), tag=ckpt.name)
    if path is None:
        raise UserError(f"cannot load checkpoint {ckpt}; delete it (and fix {ckpt.parent / LATEST}) or start another run_dir")
    set_rng_state(state["rng"][world.rank])
    return state


def read_client_state(ckpt: Path) -> Dict[str, Any]:
    """The trainer's state of a checkpoint directory (its ``trainer_state.json``), without
    an engine and without unpickling anything. Raises UserError if it is missing or
    unreadable."""
    f = Path(ckpt) / STATE
    try:
        state = json.loads(f.read_text())
    except FileNotFoundError:
        raise UserError(f"{ckpt} is not a checkpoint of this trainer (no {STATE}); checkpoints written before "
                        "checkpoints had manifests cannot be read safely: retrain, or resume from a newer one") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {f}: {e}") from None
    if not isinstance(state, dict) or "config" not in state or "rng" not in state:
        raise UserError(f"{f} is not a trainer state (no config or rng)")
    return state


def _resolve_checkpoint(path: Path) -> Path:
    """A verified checkpoint directory from a step directory, a checkpoints/ directory or a
    run directory (its ``latest``). Raises UserError naming what is damaged and, for a
    damaged ``latest``, the newest intact checkpoint to use instead."""
    path = Path(path)
    if path.name.startswith(PREFIX) and path.parent.name == CHECKPOINTS or (path / manifest.MANIFEST).is_file():
        why = manifest.problem(path)
        if why is not None:
            raise UserError(f"checkpoint {path} is damaged: {why}")
        return path
    run = run_of(path)
    lines: List[str] = []
    ckpt, problems = newest_intact(run, say=lines.append)
    if ckpt is None:
        if problems:
            raise UserError(f"no intact checkpoint in {checkpoints_dir(run)}: {problems[0]}")
        raise UserError(f"no checkpoint in {path}: pass a run directory, its checkpoints/ or a checkpoints/step-* directory")
    if problems:
        raise UserError(f"{problems[0]}; the newest intact checkpoint is {ckpt}: pass that to use it")
    return ckpt


def read_run_config(ckpt_or_run_dir: str | Path) -> Tuple[Any, Path]:
    """``(RunConfig, checkpoint directory)`` of a run directory, its ``checkpoints/`` or one
    ``checkpoints/step-*`` directory, from the verified checkpoint's trainer state alone (no
    tensor is read; e.g. a distillation teacher's shape and tokenizer at config load).
    Raises UserError as ``load_model_state``."""
    from pretrain.config import RunConfig

    ckpt = _resolve_checkpoint(Path(ckpt_or_run_dir))
    return merge_into(RunConfig, read_client_state(ckpt)["config"], where=f"{ckpt / STATE}"), ckpt


def load_model_state(ckpt_or_run_dir: str | Path) -> Tuple[Any, Dict[str, torch.Tensor]]:
    """The run config and float32 model weights of a checkpoint, for export tools.

    Args:
        ckpt_or_run_dir: a run directory (its latest checkpoint), its ``checkpoints/``
            directory, or one ``checkpoints/step-*`` directory.
    Returns:
        ``(RunConfig, state_dict)``: the config the checkpoint was trained with
        (vocab_size filled in) and the trained module's (``pretrain.tasks.build_trainable``)
        ``state_dict()`` keys mapped to float32 CPU tensors. With bf16/fp16 training these
        are the optimizer's fp32 master weights, not the rounded module weights.
    Raises:
        UserError: no checkpoint there, a damaged one (its manifest does not match: named,
            with the newest intact checkpoint of the run), not one written by this trainer,
            or one holding code (``safeload.UnsafeCheckpoint``); checked before any tensor
            is read, and every ``.pt`` file is read weights-only.
    """
    from pretrain.tasks import build_trainable
    from pretrain.training.optim import param_groups

    cfg, ckpt = read_run_config(ckpt_or_run_dir)
    model = build_trainable(cfg).float()  # BertForPretraining (MLM, distilled student) or ELECTRA's pair
    if any(ckpt.glob("*zero_pp_rank_*optim_states.pt")):
        # ZeRO partitions (and flattens) the fp32 master weights; DeepSpeed's own tool
        # gathers them back by parameter name.
        from deepspeed.utils import zero_to_fp32

        with safeload.module_loads_tensors_only(zero_to_fp32):
            sd = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        # The tied MLM decoder weight is stored once, under the embedding's name.
        if unexpected or any(k not in _tied_names(model) for k in missing):
            raise UserError(f"{ckpt} does not match the model its config builds (missing {missing[:3]}, unexpected {unexpected[:3]})")
    else:
        sd = safeload.load_tensors(ckpt / MODEL_STATES)
        opt = sd.get("optimizer") or {}
        if isinstance(opt, dict) and "fp32_groups" in opt:
            # bf16/fp16 without ZeRO: master weights are kept per param group, in the order
            # pretrain.training.optim.param_groups lists them.
            groups = param_groups(model, 0.0)
            # Frozen weights (distillation.freeze_position_embeddings) have no master copy:
            # they come from the module state, the trained ones from their masters.
            model.load_state_dict({k: v.float() for k, v in sd["module"].items()})
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
