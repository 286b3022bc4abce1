"""Masked-LM pretraining with DeepSpeed: ``train(cfg)`` runs one RunConfig to its end.

Reads top to bottom: world → config checks → data (built or found) → data and resume
checks → config.yaml → model → DeepSpeed engine → resume → loop (micro batches, optimizer
step, log, eval, checkpoint) → summary. Everything a run writes follows
``pretrain.rundir``; only rank 0 writes files.

Recipe details and where they come from (each is one config key, read here or in the
module named):
- AdamW with β1, β2, ε and decoupled weight decay (``train.optimizer``; BERT §A.2: β2=0.999,
  decay 0.01, ε=1e-6 in its reference code; RoBERTa §3.1: β2=0.98, ε=1e-6), no decay on
  biases and LayerNorm (``pretrain.optim.param_groups``);
- lr schedule (``train.schedule``, ``pretrain.optim``): linear warmup, linear decay;
- gradient clipping by global norm (``train.gradient_clipping``; BERT's reference
  ``optimization.py`` clips at 1.0; 0 turns it off);
- batch size in sequences per optimizer step (``train.global_batch_size``; BERT §A.2: 256,
  RoBERTa §3.2 and Table 3: 8K) with gradient accumulation derived, never set by hand;
- static vs. dynamic masking (``data.masking.mode``; RoBERTa §4.1): see ``pretrain.batching``.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import os
import random
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from data_prep.errors import UserError
from data_prep.masking import Masker
from data_prep.shards import ShardSet
from data_prep.tokenizer import load_tokenizer
from pretrain import checkpoint, distributed
from pretrain.batching import Collator, GlobalBatchSampler, micro_batches, rank_slice
from pretrain.config import run_dir, to_dict, to_yaml
from pretrain.evaluate import evaluate
from pretrain.model import build_model, check_model_fits_data
from pretrain.optim import build_scheduler, param_groups, schedule_fn
from pretrain.rundir import CONFIG, METRICS, SUMMARY, TENSORBOARD, write_json_atomic

PRECISIONS = ("fp32", "bf16", "fp16")
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: slurm/templates/train.sbatch.j2 requeues the job on it


class Preempted(SystemExit):
    """Raised by ``train`` after SIGUSR1 (Slurm's warning before the time limit): the run
    saved a checkpoint at the end of the step in progress and stops; ``--resume`` goes on.
    A SystemExit, so the process (a single run or a whole ablation) exits with code 75."""

    def __init__(self, run: Path, step: int) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.run, self.step = run, step

    def __str__(self) -> str:
        return f"{self.run}: stopped on SIGUSR1 after step {self.step}, checkpoint saved; rerun with --resume"


def accumulation_steps(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Gradient accumulation steps = global / (micro × world).

    Raises UserError if the global batch does not split into whole micro batches on every
    rank, listing the micro batch sizes that would.
    """
    if global_batch < 1 or micro_batch < 1:
        raise UserError(f"train.global_batch_size={global_batch} and train.micro_batch_size={micro_batch} must be >= 1")
    if global_batch % world_size:
        raise UserError(
            f"train.global_batch_size={global_batch} does not split over {world_size} ranks; use a multiple of {world_size}"
        )
    per_rank = global_batch // world_size
    if per_rank % micro_batch:
        valid = [m for m in range(1, per_rank + 1) if per_rank % m == 0]
        raise UserError(
            f"train.global_batch_size={global_batch} is not divisible by train.micro_batch_size={micro_batch} x "
            f"{world_size} rank(s); valid micro batch sizes: {', '.join(map(str, valid))}"
        )
    return per_rank // micro_batch


def deepspeed_config(train_cfg, world_size: int) -> Dict[str, Any]:
    """The DeepSpeed config dict of a TrainConfig for ``world_size`` data-parallel ranks.

    AdamW runs as ``torch.optim.AdamW`` (``torch_adam``): DeepSpeed's fused CPU Adam keeps
    step counters process-wide, which breaks bit-exact resume, and FusedLamb has no CPU
    build. The weight decay here is a default; the param groups set it per group.
    Raises UserError for an unknown precision/optimizer/ZeRO stage or a batch that does not
    divide (see ``accumulation_steps``).
    """
    t = train_cfg
    if t.precision not in PRECISIONS:
        raise UserError(f"train.precision={t.precision!r} is not one of: {', '.join(PRECISIONS)}")
    if t.optimizer.name != "adamw":
        raise UserError(f"train.optimizer.name={t.optimizer.name!r} is not supported; use adamw")
    if t.zero_stage not in (0, 1, 2, 3):
        raise UserError(f"train.zero_stage={t.zero_stage} must be 0, 1, 2 or 3")
    opt = t.optimizer
    return {
        "train_batch_size": int(t.global_batch_size),
        "train_micro_batch_size_per_gpu": int(t.micro_batch_size),
        "gradient_accumulation_steps": accumulation_steps(t.global_batch_size, t.micro_batch_size, world_size),
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": float(opt.lr),
                "betas": [float(b) for b in opt.betas],
                "eps": float(opt.eps),
                "weight_decay": float(opt.weight_decay),
                "torch_adam": True,
            },
        },
        "gradient_clipping": float(t.gradient_clipping),
        "zero_optimization": {"stage": int(t.zero_stage)},
        "bf16": {"enabled": t.precision == "bf16"},
        # Dynamic loss scaling (loss_scale 0): start at 2^16, halve on overflow.
        "fp16": {"enabled": t.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def check_train_config(t) -> None:
    """Cadences and counts that must be positive. Raises UserError naming the key."""
    for key in ("max_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
        if int(getattr(t, key)) < 1:
            raise UserError(f"train.{key}={getattr(t, key)} must be >= 1")
    if t.eval_max_batches is not None and t.eval_max_batches < 1:
        raise UserError(f"train.eval_max_batches={t.eval_max_batches} must be >= 1 or null (the whole split)")
    if t.precision == "fp16" and not torch.cuda.is_available():
        raise UserError("train.precision=fp16 needs a GPU; use bf16 (or fp32) on CPU")


class MetricsLog:
    """metrics.jsonl lines and TensorBoard scalars (rank 0 only; no-ops elsewhere)."""

    def __init__(self, run: Path, enabled: bool, resume_step: Optional[int]) -> None:
        self.enabled = enabled
        self.file = None
        self.tb = None
        if not enabled:
            return
        path = run / METRICS
        if resume_step is None:
            path.unlink(missing_ok=True)
        else:
            _truncate_metrics(path, resume_step)
        self.file = open(path, "a")
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides events a killed segment logged past the checkpoint.
        self.tb = SummaryWriter(str(run / TENSORBOARD), purge_step=None if resume_step is None else resume_step + 1)

    def write(self, record: Dict[str, Any]) -> None:
        """Append ``record`` (a dict with ``kind`` and ``step``) as one JSON line, flushed,
        and each numeric field as TensorBoard scalar ``<kind>/<field>`` at ``step``."""
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for k, v in record.items():
            if k not in ("kind", "step") and isinstance(v, (int, float)) and v is not None:
                self.tb.add_scalar(f"{record['kind']}/{k}", v, record["step"])

    def close(self) -> None:
        """Close metrics.jsonl and flush the TensorBoard writer."""
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the lines an uninterrupted run would have written up to ``step`` (and drop a
    line cut off by a kill), atomically."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("step", 0) <= step:
            keep.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)


def _locate_data(cfg, world: distributed.World) -> Path:
    from data_prep.build import build

    # Rank 0 builds; the others then find an up-to-date directory and only open it.
    if world.is_main:
        d = build(cfg.data)
    distributed.barrier()
    if not world.is_main:
        d = build(cfg.data)
    return Path(d).resolve()


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def _stop_on_usr1() -> Iterator[threading.Event]:
    """An Event that SIGUSR1 sets while the block runs (Slurm's warning before the time
    limit, ``--signal=B:USR1@S``); the previous handler comes back afterwards."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # signals reach only the main thread
        yield stop
        return
    previous = signal.signal(signal.SIGUSR1, lambda *_: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGUSR1, previous)


def train(cfg, resume: bool = False) -> Dict[str, Any]:
    """Pretrain ``cfg`` (a RunConfig) to ``train.max_steps`` and return its summary.

    With ``resume`` the run continues from ``<run_dir>/checkpoints/latest`` (or starts
    fresh, saying so, if there is none); the result — losses, eval metrics, weights — is
    bit-identical to an uninterrupted run in fp32 on CPU. Callable repeatedly in one process.

    SIGUSR1 at any time makes the run save a checkpoint after the step in progress and
    raise ``Preempted`` (exit code 75).

    Returns:
        The summary dict written to summary.json (see ``pretrain.rundir``).
    Raises:
        UserError: anything wrong with the config, data, or run directory — all checked
            before the first step.
        Preempted: stopped by SIGUSR1 (a checkpoint of the last finished step exists).
    """
    with _stop_on_usr1() as stop_requested:
        return _train(cfg, resume, stop_requested)


def _train(cfg, resume: bool, stop_requested: threading.Event) -> Dict[str, Any]:
    world = distributed.init()
    distributed.set_threads(world.local_size)
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    cfg = copy.deepcopy(cfg)  # vocab_size gets filled in; the caller's config stays as given
    t = cfg.train
    run = run_dir(cfg)

    # ---- every check before the first step: config first (cheap), then data
    check_train_config(t)
    ds_config = deepspeed_config(t, world.size)
    schedule_fn(t.schedule, t.max_steps)
    check_model_fits_data(cfg.model, cfg.data)
    ckpt = checkpoint.latest(run) if resume else None
    if not resume and (checkpoint.latest(run) is not None or checkpoint.list_checkpoints(run)):
        raise UserError(f"{run} already has checkpoints; pass --resume to continue it or set run_dir to a new directory")

    data_dir = _locate_data(cfg, world)
    shards = ShardSet(data_dir, verify=world.is_main)
    train_split, val_split = shards["train"], shards["validation"]
    tok = load_tokenizer(shards.tokenizer_path, cfg.data.tokenizer.kind)
    if cfg.model.vocab_size is None:
        cfg.model.vocab_size = tok.vocab_size
    elif cfg.model.vocab_size < tok.vocab_size:
        raise UserError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {tok.vocab_size} ids "
            f"({shards.tokenizer_path}); set model.vocab_size=null to take it from the tokenizer"
        )
    sampler = GlobalBatchSampler(len(train_split), t.global_batch_size, t.seed)
    if len(val_split) == 0:
        raise UserError(f"{data_dir} has an empty validation split; raise data.validation_fraction")
    train_lengths = train_split.lengths()
    cfg_dict = to_dict(cfg)
    if resume and ckpt is None and world.is_main:
        print(f"no checkpoint in {run / 'checkpoints'}; starting fresh")
    if ckpt is not None:
        saved = checkpoint.read_client_state(ckpt)
        diff = checkpoint.config_differences(saved["config"], cfg_dict)
        if diff:
            raise UserError(f"cannot resume {run}: the config differs from its checkpoint in {'; '.join(diff)}")
        if saved["step"] > t.max_steps:
            raise UserError(f"{ckpt.name} is past train.max_steps={t.max_steps}; raise max_steps or use another run_dir")

    if world.is_main:
        run.mkdir(parents=True, exist_ok=True)
        tmp = run / (CONFIG + ".tmp")
        tmp.write_text(to_yaml(cfg))
        os.replace(tmp, run / CONFIG)
        (run / SUMMARY).unlink(missing_ok=True)
        if ckpt is None:
            import shutil

            shutil.rmtree(run / TENSORBOARD, ignore_errors=True)

    # ---- model and engine
    _seed_all(t.seed)
    model = build_model(cfg.model, cfg.objective.sentence)
    num_parameters = model.num_parameters()
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model, t.optimizer.weight_decay),
        config=ds_config,
        lr_scheduler=lambda opt: build_scheduler(opt, t.schedule, t.max_steps),
    )
    # Dropout differs between ranks; init (above) and data order do not.
    torch.manual_seed(int(np.random.SeedSequence([t.seed, world.rank]).generate_state(1)[0]))
    log = bar = None
    try:
        masker = Masker.from_config(cfg.data.masking, tok.vocab_size, tok.mask_id, tok.special_ids)
        collate = Collator(train_split, tok.pad_id, masker, seed=t.seed)
        collate_val = Collator(val_split, tok.pad_id)
        # DeepSpeed reports the gradient norm from its own optimizer wrappers (bf16/fp16/ZeRO);
        # for plain fp32 without ZeRO the grads sit in .grad at the boundary and we measure them.
        own_grad_norm = t.precision == "fp32" and t.zero_stage == 0

        # ---- resume
        step, tokens_seen, wall_prior = 0, 0, 0.0
        window = {"steps": 0, "tokens": 0, "losses": {}, "start_time_s": 0.0}
        last_eval: Optional[Dict[str, Any]] = None
        if ckpt is not None:
            state = checkpoint.load(engine, ckpt, world)
            step, tokens_seen, wall_prior = state["step"], state["tokens_seen"], state["wall_time_s"]
            window, last_eval = state["window"], state.get("last_eval")
            if world.is_main:
                print(f"resumed {run} from {ckpt.name} (step {step})")
        log = MetricsLog(run, world.is_main, resume_step=step if ckpt is not None else None)

        def wall() -> float:
            return wall_prior + (time.time() - segment_start)

        def client_state() -> Dict[str, Any]:
            return {
                "step": step,
                "tokens_seen": tokens_seen,
                "wall_time_s": wall(),
                "window": window,
                "last_eval": last_eval,
                "config": cfg_dict,
                "fingerprint": checkpoint.config_fingerprint(cfg_dict),
                "world_size": world.size,
            }

        def run_eval() -> Dict[str, Any]:
            m = evaluate(engine, collate_val, t.micro_batch_size, world.rank, world.size, t.eval_max_batches)
            rec = {"kind": "eval", "step": step, "epoch": step * t.global_batch_size / len(train_split),
                   "tokens_seen": tokens_seen, **m, "time_s": wall()}
            log.write(rec)
            if world.is_main:
                bar.write(f"step {step}: eval mlm_loss {m['mlm_loss']:.4f}  perplexity {m['perplexity']:.2f}  "
                          f"accuracy {m['mlm_accuracy']:.4f}")
            return rec

        # ---- loop
        segment_start = time.time()
        bar = tqdm(total=t.max_steps, initial=step, unit="step", disable=not world.is_main, dynamic_ncols=True, desc=cfg.name)
        while step < t.max_steps:
            epoch, rows = sampler.global_batch(step)
            lr = engine.get_lr()[0]
            sums: Dict[str, float] = {}
            pieces = micro_batches(rank_slice(rows, world.rank, world.size), t.micro_batch_size)
            grad_norm = None
            for i, mb in enumerate(pieces):
                out = engine(**collate(mb, epoch))
                engine.backward(out["loss"])
                if own_grad_norm and i == len(pieces) - 1:
                    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
                    grad_norm = float(torch.nn.utils.get_total_norm(grads))
                engine.step()
                for k, v in out.items():
                    if k == "loss" or k.endswith("_loss"):
                        sums[k] = sums.get(k, 0.0) + float(v.detach())
            if grad_norm is None:
                gn = engine.get_global_grad_norm()
                grad_norm = None if gn is None else float(gn)
            step += 1
            tokens_seen += int(train_lengths[rows].sum())
            # Step loss = mean over every micro batch of every rank (what was optimised).
            keys = sorted(sums)
            # The stop flag rides along, so every rank stops after the same step.
            reduced = distributed.all_reduce_sum(torch.tensor(
                [sums[k] for k in keys] + [len(pieces), float(stop_requested.is_set())], dtype=torch.float64))
            n_micro, stop = reduced[-2].item(), reduced[-1].item() > 0
            for k, v in zip(keys, reduced[:-2].tolist()):
                window["losses"][k] = window["losses"].get(k, 0.0) + v / n_micro
            window["steps"] += 1
            window["tokens"] += int(train_lengths[rows].sum())
            bar.update(1)

            if step % t.log_every == 0 or step == t.max_steps:
                now = wall()
                rec = {"kind": "train", "step": step, "epoch": step * t.global_batch_size / len(train_split),
                       "tokens_seen": tokens_seen}
                rec.update({k: v / window["steps"] for k, v in sorted(window["losses"].items())})
                rec.update(lr=lr, grad_norm=grad_norm,
                           tokens_per_s=window["tokens"] / max(now - window["start_time_s"], 1e-9), time_s=now)
                log.write(rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
                window = {"steps": 0, "tokens": 0, "losses": {}, "start_time_s": now}
            if step % t.eval_every == 0 or step == t.max_steps:
                last_eval = run_eval()
            if stop or step % t.checkpoint_every == 0 or step == t.max_steps:
                checkpoint.save(engine, run, step, client_state(), t.keep_checkpoints, world)
            if stop and step < t.max_steps:
                bar.close()
                if world.is_main:
                    print(f"SIGUSR1: checkpoint {checkpoint.tag(step)} saved; resume with --resume")
                raise Preempted(run, step)
        bar.close()

        if last_eval is None or last_eval["step"] != step:
            last_eval = run_eval()  # a resumed, already finished run with no eval recorded
        summary = {
            "status": "done",
            "steps": step,
            "tokens_seen": tokens_seen,
            "epochs": step * t.global_batch_size / len(train_split),
            "wall_time_s": wall(),
            "final_eval": {k: last_eval[k] for k in ("mlm_loss", "perplexity", "mlm_accuracy")},
            "data_dir": str(data_dir),
            "num_train_sequences": len(train_split),
            "num_parameters": num_parameters,
        }
        if world.is_main:
            write_json_atomic(run / SUMMARY, summary)
        return summary
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
        engine.destroy()
        del engine
        gc.collect()
