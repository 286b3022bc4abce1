"""Masked-LM pretraining with DeepSpeed: ``train(cfg)`` runs one RunConfig to its end.

Reads top to bottom: world → config checks → data (built or found) → data and resume
checks → config.yaml → model → DeepSpeed engine → resume → loop (micro batches, optimizer
step, guards, log, eval, checkpoint, preemption) → summary. Everything a run writes
follows ``pretrain.training.rundir``; only rank 0 writes files.

Recipe details and where they come from (each is one config key, read here or in the
module named):
- optimizer (``train.optimizer``, ``pretrain.training.optim``): AdamW with β1, β2, ε and decoupled
  weight decay (BERT §A.2: β2=0.999, decay 0.01; RoBERTa §3.1: β2=0.98, ε=1e-6) or LAMB
  (You et al. 2020; ALBERT §4.1); no decay on biases and LayerNorm;
- lr schedule (``train.schedule``, ``pretrain.training.optim``): warmup, then linear (RoBERTa),
  polynomial (BERT's code) or warmup-stable-decay;
- gradient clipping by global norm (``train.gradient_clipping``; BERT's reference
  ``optimization.py`` clips at 1.0; RoBERTa's Table 9 does not clip; 0 turns it off);
- batch size in sequences per optimizer step (``train.global_batch_size``; BERT §A.2: 256,
  RoBERTa Table 3: 256 / 2K / 8K, ALBERT §4.1: 4096) with gradient accumulation derived
  from it, the micro batch and the world size, never set by hand; DOC-SENTENCES batches
  hold a constant number of tokens instead (``data.doc_sentences_batching``, RoBERTa §4.2,
  ``pretrain.training.batching``);
- static vs. dynamic masking (``data.masking.mode``; RoBERTa §4.1): see ``pretrain.training.batching``.

Precision (``train.precision``): fp32 or bf16 anywhere, fp16 with dynamic loss scaling on
GPU. A non-finite loss stops an fp32/bf16 run (``NonFiniteLoss``, naming the last good
checkpoint); in fp16 the loss scaler skips the step and ``skipped_steps`` counts it.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import math
import random
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from common.atomic import write_text_atomic
from common.diskspace import disk_full_error, is_disk_full
from common.errors import UserError
from data_prep.masking import Masker
from data_prep.shards import ShardSet
from data_prep.tokenizer import load_tokenizer
from pretrain.config import run_dir, to_dict, to_yaml
from pretrain.criterions.pretraining import check_objective
from pretrain.models.encoder import build_model, check_model_fits_data
from pretrain.training import checkpoint, distributed
from pretrain.training.batching import Collator, make_sampler, rank_micro_batches
from pretrain.training.evaluate import evaluate
from pretrain.training.mfu import ModelFlops, peak_flops
from pretrain.training.optim import (
    build_optimizer,
    build_scheduler,
    check_optimizer,
    lamb_impl,
    param_groups,
    schedule_fn,
)
from pretrain.training.rundir import (
    CONFIG,
    METRICS,
    SUMMARY,
    TENSORBOARD,
    locked,
    write_json_atomic,
)

PRECISIONS = ("fp32", "bf16", "fp16")
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: slurm/templates/train.sbatch.j2 requeues the job on it
# SIGUSR1: Slurm's warning before the time limit (--signal=B:USR1@S); SIGTERM: what Slurm,
# Kubernetes and torchrun send before killing a process.
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class Preempted(SystemExit):
    """Raised by ``train`` after SIGUSR1 or SIGTERM: the run saved a checkpoint at the end
    of the step in progress and stops; ``--resume`` goes on. A SystemExit, so the process
    (a single run or a whole ablation) exits with code 75."""

    def __init__(self, run: Path, step: int, signal_name: str = "SIGUSR1") -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.run, self.step, self.signal_name = run, step, signal_name

    def __str__(self) -> str:
        return f"{self.run}: stopped on {self.signal_name} after step {self.step}, checkpoint saved; rerun with --resume"


class NonFiniteLoss(UserError):
    """An fp32/bf16 run produced a NaN/inf loss; it stopped without saving a checkpoint of
    the broken state. The message names the last good checkpoint."""


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
    step counters process-wide, which breaks bit-exact resume. LAMB runs as DeepSpeed's
    FusedLamb (an ``optimizer`` section here) or, with ``lamb_impl`` torch (the default
    without CUDA), as ``pretrain.training.lamb.Lamb`` passed to ``deepspeed.initialize`` (no section
    here; ``pretrain.training.optim.build_optimizer``). The weight decay here is a default; the param
    groups set it per group. fp16 uses dynamic loss scaling (start 2^16, halve on overflow).
    Machine-independent except for ``lamb_impl: auto``, so a GPU job can be checked on a
    login node.

    Raises UserError for an unknown precision/optimizer/ZeRO stage, LAMB with ZeRO (stages
    1-3 hand the optimizer flat partitions of many tensors, so LAMB's per-tensor trust
    ratio, You et al. 2020 §3, would be computed over slices), or a batch that does not
    divide (see ``accumulation_steps``).
    """
    t = train_cfg
    if t.precision not in PRECISIONS:
        raise UserError(f"train.precision={t.precision!r} is not one of: {', '.join(PRECISIONS)}")
    check_optimizer(t.optimizer)
    if t.zero_stage not in (0, 1, 2, 3):
        raise UserError(f"train.zero_stage={t.zero_stage} must be 0, 1, 2 or 3")
    opt = t.optimizer
    if opt.name == "lamb" and t.zero_stage > 0:
        raise UserError(
            f"train.optimizer.name=lamb does not work with train.zero_stage={t.zero_stage}: ZeRO hands the optimizer "
            "flat partitions, so LAMB's per-tensor trust ratio would be wrong; use zero_stage=0"
        )
    params = {"lr": float(opt.lr), "betas": [float(b) for b in opt.betas], "eps": float(opt.eps),
              "weight_decay": float(opt.weight_decay)}
    ds: Dict[str, Any] = {
        "train_batch_size": int(t.global_batch_size),
        "train_micro_batch_size_per_gpu": int(t.micro_batch_size),
        "gradient_accumulation_steps": accumulation_steps(t.global_batch_size, t.micro_batch_size, world_size),
        "gradient_clipping": float(t.gradient_clipping),
        # ZeRO-3's "memory efficient linear" replaces torch.nn.functional.linear for the whole
        # process and never restores it: later runs in the process (ablation arms) would
        # compute with other rounding. Plain linear works under ZeRO-3 as well.
        "zero_optimization": {"stage": int(t.zero_stage),
                              **({"memory_efficient_linear": False} if t.zero_stage == 3 else {})},
        "bf16": {"enabled": t.precision == "bf16"},
        "fp16": {"enabled": t.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if opt.name == "adamw":
        ds["optimizer"] = {"type": "AdamW", "params": {**params, "torch_adam": True}}
    elif lamb_impl(opt, torch.cuda.is_available()) == "fused":
        # FusedLamb bounds the trust ratio itself to [min_coeff, max_coeff]; these are its defaults.
        ds["optimizer"] = {"type": "Lamb", "params": {**params, "max_coeff": 10.0, "min_coeff": 0.01}}
    return ds


def check_train_config(t) -> None:
    """Cadences and counts that must be positive. Raises UserError naming the key."""
    for key in ("max_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
        if int(getattr(t, key)) < 1:
            raise UserError(f"train.{key}={getattr(t, key)} must be >= 1")
    if t.eval_max_batches is not None and t.eval_max_batches < 1:
        raise UserError(f"train.eval_max_batches={t.eval_max_batches} must be >= 1 or null (the whole split)")
    if t.peak_flops is not None and not t.peak_flops > 0:
        raise UserError(f"train.peak_flops={t.peak_flops} must be > 0 (FLOP/s of one device) or null")
    if t.gradient_clipping < 0:
        raise UserError(f"train.gradient_clipping={t.gradient_clipping} must be >= 0 (0 = off)")
    if t.precision == "fp16" and not torch.cuda.is_available():
        raise UserError("train.precision=fp16 needs a GPU; use bf16 (or fp32) on CPU")


def check_device(t) -> None:
    """What this machine cannot run (checked by the trainer only, so a GPU job can be
    submitted from a login node without one). Raises UserError: ``lamb_impl=fused``
    without CUDA (DeepSpeed's FusedLamb is a CUDA kernel)."""
    if t.optimizer.name == "lamb" and t.optimizer.lamb_impl == "fused" and not torch.cuda.is_available():
        raise UserError("train.optimizer.lamb_impl=fused needs CUDA (DeepSpeed's FusedLamb has no CPU build); "
                        "use lamb_impl=torch (or auto)")


class MetricsLog:
    """metrics.jsonl lines and TensorBoard scalars (rank 0 only; no-ops elsewhere)."""

    def __init__(self, run: Path, enabled: bool, resume_step: Optional[int]) -> None:
        self.enabled = enabled
        self.file = None
        self.tb = None
        if not enabled:
            return
        path = self.path = run / METRICS
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
        line = json.dumps(record) + "\n"
        try:
            self.file.write(line)
            self.file.flush()
        except OSError as e:
            # A line cut short here is dropped when the run resumes (_truncate_metrics).
            if is_disk_full(e, self.path):
                raise disk_full_error(self.path, len(line), ", then rerun with --resume") from None
            raise
        for k, v in record.items():
            if k not in ("kind", "step") and isinstance(v, (int, float)) and v is not None:
                self.tb.add_scalar(f"{record['kind']}/{k}", v, record["step"])

    def close(self) -> None:
        """Close metrics.jsonl and flush the TensorBoard writer."""
        if self.file:
            try:
                self.file.close()
            except OSError:
                pass  # a full disk, already reported by write()
        if self.tb:
            try:
                self.tb.close()
            except OSError:
                pass  # the same full disk: metrics.jsonl is the record, TensorBoard a view of it


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
    write_text_atomic(path, "".join(keep))


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
def _stop_on_signals() -> Iterator[List[str]]:
    """A list that SIGUSR1/SIGTERM append their names to while the block runs; the
    previous handlers come back afterwards. The loop checks it at each step boundary."""
    received: List[str] = []
    if threading.current_thread() is not threading.main_thread():  # signals reach only the main thread
        yield received
        return
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signal.Signals(signum).name))
                for sig in STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def train(cfg, resume: bool = False) -> Dict[str, Any]:
    """Pretrain ``cfg`` (a RunConfig) to ``train.max_steps`` and return its summary.

    With ``resume`` the run continues from ``<run_dir>/checkpoints/latest``, or the newest
    intact checkpoint if that one is damaged or ``latest`` is missing, or starts fresh,
    saying so, if there is none (``checkpoint.resume_point``); without it, a run directory
    that already holds a run is refused. The run directory is locked meanwhile
    (``rundir.locked``). The result — losses, eval metrics, weights — is
    bit-identical to an uninterrupted run in fp32 on CPU. Callable repeatedly in one process.

    SIGUSR1 or SIGTERM at any time makes the run save a checkpoint after the step in
    progress and raise ``Preempted`` (exit code 75); every rank stops after the same step.

    Returns:
        The summary dict written to summary.json (see ``pretrain.training.rundir``).
    Raises:
        UserError: anything wrong with the config, data, or run directory — all checked
            before the first step.
        NonFiniteLoss: (a UserError) a NaN/inf loss in an fp32/bf16 run.
        Preempted: stopped by a signal (a checkpoint of the last finished step exists).
    """
    # The run directory is locked for the whole run (a second process stops with one line).
    with _stop_on_signals() as signals_received, locked(run_dir(cfg)):
        return _train(cfg, resume, signals_received)


def _train(cfg, resume: bool, signals_received: List[str]) -> Dict[str, Any]:
    world = distributed.init()
    distributed.set_threads(world.local_size)
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    cfg = copy.deepcopy(cfg)  # vocab_size gets filled in; the caller's config stays as given
    t = cfg.train
    run = run_dir(cfg)
    cuda = torch.cuda.is_available()

    # ---- every check before the first step: config first (cheap), then data
    check_train_config(t)
    check_device(t)
    ds_config = deepspeed_config(t, world.size)
    accumulation = ds_config["gradient_accumulation_steps"]
    schedule_fn(t.schedule, t.max_steps)
    check_model_fits_data(cfg.model, cfg.data)
    ckpt = checkpoint.resume_point(run, resume, world)

    data_dir = _locate_data(cfg, world)
    shards = ShardSet(data_dir, verify=world.is_main)
    train_split, val_split = shards["train"], shards["validation"]
    check_objective(cfg.objective.sentence, train_split.columns)
    tok = load_tokenizer(shards.tokenizer_path, cfg.data.tokenizer.kind)
    if cfg.model.vocab_size is None:
        cfg.model.vocab_size = tok.vocab_size
    elif cfg.model.vocab_size < tok.vocab_size:
        raise UserError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {tok.vocab_size} ids "
            f"({shards.tokenizer_path}); set model.vocab_size=null to take it from the tokenizer"
        )
    train_lengths = train_split.lengths()
    sampler = make_sampler(cfg.data, train_lengths, t.global_batch_size, t.seed)
    if len(val_split) == 0:
        raise UserError(f"{data_dir} has an empty validation split; raise data.validation_fraction")
    cfg_dict = to_dict(cfg)
    if ckpt is not None:
        saved = checkpoint.read_client_state(ckpt)
        diff = checkpoint.config_differences(saved["config"], cfg_dict)
        if diff:
            raise UserError(f"cannot resume {run}: the config differs from its checkpoint in {'; '.join(diff)}")
        if saved["step"] > t.max_steps:
            raise UserError(f"{ckpt.name} is past train.max_steps={t.max_steps}; raise max_steps or use another run_dir")

    if world.is_main:
        run.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run / CONFIG, to_yaml(cfg))
        (run / SUMMARY).unlink(missing_ok=True)
        if ckpt is None:
            import shutil

            shutil.rmtree(run / TENSORBOARD, ignore_errors=True)

    # ---- model and engine
    _seed_all(t.seed)
    model = build_model(cfg.model, cfg.objective.sentence)
    num_parameters = model.num_parameters()
    model_flops = ModelFlops(model)  # before ZeRO-3 partitions the weights away
    peak = peak_flops(t)
    groups = param_groups(model, t.optimizer.weight_decay)
    optimizer = build_optimizer(t.optimizer, groups, cuda)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=groups if optimizer is None else None,
        optimizer=optimizer,
        config=ds_config,
        lr_scheduler=lambda opt: build_scheduler(opt, t.schedule, t.max_steps),
    )
    _undo_state_allocation_step(engine)
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
        step, tokens_seen, wall_prior, skipped_steps = 0, 0, 0.0, 0
        window = {"steps": 0, "tokens": 0, "flops": 0.0, "losses": {}, "start_time_s": 0.0}
        last_eval: Optional[Dict[str, Any]] = None
        if ckpt is not None:
            state = checkpoint.load(engine, ckpt, world)
            step, tokens_seen, wall_prior = state["step"], state["tokens_seen"], state["wall_time_s"]
            window, last_eval = state["window"], state.get("last_eval")
            window.setdefault("flops", 0.0)  # checkpoints written before MFU logging
            skipped_steps = state.get("skipped_steps", 0)
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
                "skipped_steps": skipped_steps,
                "config": cfg_dict,
                "fingerprint": checkpoint.config_fingerprint(cfg_dict),
                "world_size": world.size,
            }

        def run_eval() -> Dict[str, Any]:
            m = evaluate(engine, collate_val, t.micro_batch_size, world.rank, world.size, t.eval_max_batches)
            rec = {"kind": "eval", "step": step, "epoch": sampler.epochs(step), "tokens_seen": tokens_seen, **m,
                   "time_s": wall()}
            log.write(rec)
            if world.is_main:
                sentence = f"  sentence accuracy {m['sentence_accuracy']:.4f}" if "sentence_accuracy" in m else ""
                bar.write(f"step {step}: eval mlm_loss {m['mlm_loss']:.4f}  perplexity {m['perplexity']:.2f}  "
                          f"accuracy {m['mlm_accuracy']:.4f}{sentence}")
            return rec

        # ---- loop
        segment_start = time.time()
        bar = tqdm(total=t.max_steps, initial=step, unit="step", disable=not world.is_main, dynamic_ncols=True, desc=cfg.name)
        while step < t.max_steps:
            epoch, rows = sampler.global_batch(step)
            lr = engine.get_lr()[0]
            sums: Dict[str, torch.Tensor] = {}
            pieces = rank_micro_batches(rows, world.rank, world.size, accumulation)
            grad_norm = None
            for i, mb in enumerate(pieces):
                out = engine(**collate(mb, epoch))
                engine.backward(out["loss"])
                if own_grad_norm and i == len(pieces) - 1:
                    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
                    grad_norm = float(torch.nn.utils.get_total_norm(grads))
                engine.step()  # DeepSpeed updates the weights after the last micro batch only
                for k, v in out.items():
                    if k == "loss" or k.endswith("_loss"):
                        # summed on the device in float64: one host sync per step, not per micro batch
                        sums[k] = sums.get(k, 0.0) + v.detach().double()
            if grad_norm is None:
                gn = engine.get_global_grad_norm()
                grad_norm = None if gn is None else float(gn)
            step += 1
            batch_tokens = int(train_lengths[rows].sum())
            tokens_seen += batch_tokens
            # Step loss = mean over every micro batch of every rank (what was optimised).
            keys = sorted(sums)
            # The stop flag rides along, so every rank stops after the same step.
            reduced = distributed.all_reduce_sum(torch.cat([
                torch.stack([sums[k] for k in keys]).cpu(),
                torch.tensor([len(pieces), float(bool(signals_received))], dtype=torch.float64)]))
            n_micro, stop = reduced[-2].item(), reduced[-1].item() > 0
            losses = {k: v / n_micro for k, v in zip(keys, reduced[:-2].tolist())}
            finite = all(math.isfinite(v) for v in losses.values())
            if not finite and t.precision != "fp16":
                raise _non_finite(run, step, losses)
            if t.precision == "fp16" and (not finite or not engine.was_step_applied()):
                skipped_steps += 1  # the loss scaler found inf/NaN gradients and skipped the update
            if finite:
                for k, v in losses.items():
                    window["losses"][k] = window["losses"].get(k, 0.0) + v
                window["steps"] += 1
            window["tokens"] += batch_tokens
            window["flops"] += model_flops(train_lengths[rows])
            bar.update(1)

            if step % t.log_every == 0 or step == t.max_steps:
                now = wall()
                seconds = max(now - window["start_time_s"], 1e-9)
                rec = {"kind": "train", "step": step, "epoch": sampler.epochs(step), "tokens_seen": tokens_seen}
                rec.update({k: v / max(1, window["steps"]) for k, v in sorted(window["losses"].items())})
                # Model FLOP/s per device (pretrain.training.mfu): the window's FLOPs over all ranks / ranks.
                device_flops = window["flops"] / seconds / world.size
                rec.update(lr=lr, grad_norm=grad_norm, tokens_per_s=window["tokens"] / seconds,
                           model_tflops=device_flops / 1e12, time_s=now)
                if peak is not None:
                    rec["mfu"] = device_flops / peak
                if t.precision == "fp16":
                    rec["skipped_steps"] = skipped_steps
                log.write(rec)
                bar.set_postfix(loss=f"{rec.get('loss', float('nan')):.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
                window = {"steps": 0, "tokens": 0, "flops": 0.0, "losses": {}, "start_time_s": now}
            if step % t.eval_every == 0 or step == t.max_steps:
                last_eval = run_eval()
            if stop or step % t.checkpoint_every == 0 or step == t.max_steps:
                # save() ends with a barrier: no rank leaves before every rank's shard is on disk.
                checkpoint.save(engine, run, step, client_state(), t.keep_checkpoints, world)
            if stop and step < t.max_steps:
                bar.close()
                name = signals_received[0] if signals_received else "a signal on another rank"
                if world.is_main:
                    print(f"{name}: checkpoint {checkpoint.tag(step)} saved; resume with --resume")
                raise Preempted(run, step, name)
        bar.close()

        if last_eval is None or last_eval["step"] != step:
            last_eval = run_eval()  # a resumed, already finished run with no eval recorded
        summary = {
            "status": "done",
            "steps": step,
            "tokens_seen": tokens_seen,
            "epochs": sampler.epochs(step),
            "wall_time_s": wall(),
            "final_eval": {k: last_eval[k] for k in ("mlm_loss", "perplexity", "mlm_accuracy", "sentence_accuracy")
                           if k in last_eval},
            "data_dir": str(data_dir),
            "num_train_sequences": len(train_split),
            "num_parameters": num_parameters,
        }
        if t.precision == "fp16":
            summary["skipped_steps"] = skipped_steps
        if world.is_main:
            write_json_atomic(run / SUMMARY, summary)
        distributed.barrier()
        return summary
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
        engine.destroy()
        del engine
        gc.collect()


def _undo_state_allocation_step(engine) -> None:
    """DeepSpeed's bf16/fp16 optimizer without ZeRO (``FP16_UnfusedOptimizer``) allocates
    the optimizer state by taking one step with zero gradients at the peak lr. That step is
    not harmless: decoupled weight decay shrinks the fp32 master weights (LAMB's trust ratio
    makes it ``w ← (1 - lr)·w``) and the bias-correction clock starts at 1. Put the masters
    back to the module's weights (from which DeepSpeed made them) and let the optimizer
    allocate its state lazily at the first real step, as it does in fp32."""
    opt = engine.optimizer
    if type(opt).__name__ != "FP16_UnfusedOptimizer":
        return
    with torch.no_grad():
        for low, masters in zip(opt.fp16_groups, opt.fp32_groups):
            for p, master in zip(low, masters):
                master.copy_(p.float())
    opt.optimizer.state.clear()


def _non_finite(run: Path, step: int, losses: Dict[str, float]) -> NonFiniteLoss:
    last = checkpoint.latest(run)
    where = (f"the last good checkpoint is {last} (step {int(last.name[len(checkpoint.PREFIX):])})" if last
             else "no checkpoint was saved before it")
    values = ", ".join(f"{k}={v}" for k, v in sorted(losses.items()))
    return NonFiniteLoss(
        f"non-finite loss at step {step} of {run} ({values}); stopped without saving; {where}. The run is "
        "deterministic, so start a new run_dir with a lower train.optimizer.lr, a longer train.schedule.warmup_steps "
        "or train.precision=fp32"
    )
