"""The training loop: ``train(cfg)`` runs one run config to its end, whatever it trains.

It knows no objective. A ``pretrain.tasks.base.Task`` supplies the data, the modules, the
batches, the criterion and the metrics (default: MLM pretraining,
``pretrain.tasks.pretraining``); the loop supplies, top to bottom:

world → config checks (``pretrain.training.checks.check_run``) → task.prepare (data) →
resume checks → config.yaml → trainable module → DeepSpeed engine → resume → per step:
micro batches, global sample size, forward/backward, optimizer step, non-finite guard,
log, eval, checkpoint, preemption → summary.json. Everything a run writes follows
``pretrain.training.rundir``; only rank 0 writes files.

Loss reduction (``pretrain.tasks.base``): before any backward of a step the loop adds the
criterion's sample sizes (masked tokens, pairs, ...) over the step's micro batches and
ranks; each micro batch back-propagates its loss sums over those GLOBAL counts, so the
step's gradient is that of ``Σ loss / Σ count`` over the whole global batch (fairseq's
``sample_size``, torchtitan's global valid-token count), not a mean of per-micro-batch
means. DeepSpeed divides by the accumulation steps (skipped here: ``scale_wrt_gas=False``)
and averages gradients over ranks (undone by a factor of the world size).

Recipe details each come from one config key, read in the module named:
- optimizer, lr schedule, no decay on biases and LayerNorm (``train.optimizer``,
  ``train.schedule``; ``pretrain.training.optim``): AdamW (BERT §A.2, RoBERTa §3.1) or
  LAMB (You et al. 2020; ALBERT §4.1); warmup then linear, polynomial or WSD decay;
- gradient clipping by global norm (``train.gradient_clipping``; BERT's reference
  ``optimization.py`` clips at 1.0; RoBERTa's Table 9 does not clip; 0 turns it off);
- batch size in sequences per optimizer step (``train.global_batch_size``; BERT §A.2: 256,
  RoBERTa Table 3: 256 / 2K / 8K, ALBERT §4.1: 4096) with micro batch and accumulation
  derived from it and the world size (``pretrain.training.engine.split_batch``);
- precision (``train.precision``): fp32 or bf16 anywhere, fp16 with dynamic loss scaling on
  GPU. A non-finite loss stops an fp32/bf16 run (``NonFiniteLoss``, naming the last good
  checkpoint); in fp16 the loss scaler skips the step and ``skipped_steps`` counts it.
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Type

import numpy as np
import torch
from tqdm.auto import tqdm

from common.atomic import write_json_atomic, write_text_atomic
from common.errors import UserError
from pretrain.config import run_dir, to_dict, to_yaml
from pretrain.tasks.base import Task, normalized_loss
from pretrain.training import checkpoint, distributed, hardware
from pretrain.training.batching import rank_micro_batches
from pretrain.training.checks import check_device, check_run, device_warnings
from pretrain.training.engine import accumulation_steps, build_engine, deepspeed_config  # noqa: F401 (API)
from pretrain.training.evaluate import to_device
from pretrain.training.metrics_log import MetricsLog
from pretrain.training.mfu import peak_flops
from pretrain.training.preemption import PREEMPTED_EXIT_CODE, Preempted, stop_on_signals, stop_requested  # noqa: F401 (API)
from pretrain.training.rundir import CONFIG, SUMMARY, TENSORBOARD, locked


class NonFiniteLoss(UserError):
    """An fp32/bf16 run produced a NaN/inf loss; it stopped without saving a checkpoint of
    the broken state. The message names the last good checkpoint."""


def train(cfg, resume: bool = False, task: Optional[Type[Task]] = None) -> Dict[str, Any]:
    """Train ``cfg`` to ``train.max_steps`` and return its summary.

    Args:
        cfg: the run config (``pretrain.config.RunConfig`` for pretraining; any structured
            config with ``name``, ``run_dir`` and ``train`` for another task). Not modified.
        resume: continue from ``<run_dir>/checkpoints/latest`` (or start fresh, saying so,
            if there is none); the result — losses, eval metrics, weights — is bit-identical
            to an uninterrupted run in fp32 on CPU.
        task: the Task class (default: the class of the config's ``task`` key,
            ``pretrain.tasks.task_class``: pretraining, distillation or electra).

    Callable repeatedly in one process (the ablation runner trains arm after arm). SIGUSR1
    or SIGTERM at any time, or a spent ``preemption.time_budget``, makes the run save a
    checkpoint after the step in progress and raise ``Preempted`` (exit code 75); every rank
    stops after the same step.

    Returns:
        The summary dict written to summary.json (see ``pretrain.training.rundir``).
    Raises:
        UserError: anything wrong with the config, data, or run directory — all checked
            before the first step.
        NonFiniteLoss: (a UserError) a NaN/inf loss in an fp32/bf16 run.
        Preempted: stopped by a signal (a checkpoint of the last finished step exists).
    """
    if task is None:
        from pretrain.tasks import task_class

        task = task_class(cfg)  # task: pretraining → PretrainingTask, electra → ElectraTask
    # The run directory is locked for the whole run (a second process stops with one line).
    with stop_on_signals() as signals_received, locked(run_dir(cfg)):
        return _train(cfg, resume, task, signals_received)


def _train(cfg, resume: bool, task_cls: Type[Task], signals_received: List[str]) -> Dict[str, Any]:
    world = distributed.init()
    distributed.set_threads(world.local_size)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    cfg = copy.deepcopy(cfg)  # the task fills in values (vocab_size); the caller's config stays as given
    t = cfg.train
    run = run_dir(cfg)

    # ---- every check before the first step: config first (cheap), then data
    ds_config = check_run(cfg, world.size, task_cls)
    _check_machine(t, world)
    accumulation = ds_config["gradient_accumulation_steps"]
    ckpt = checkpoint.resume_point(run, resume, world)

    task = task_cls(cfg)
    task.prepare(world)
    sampler = task.train_sampler()
    criterion = task.criterion
    cfg_dict = to_dict(cfg)
    if ckpt is not None:
        _check_resumable(run, ckpt, cfg_dict, t.max_steps)
    if world.is_main:
        _start_run_dir(run, cfg, fresh=ckpt is None)

    # ---- modules and engine
    engine, num_parameters = _build_engine(task, t, ds_config, world.rank)
    peak = peak_flops(t)
    # DeepSpeed reports the gradient norm from its own optimizer wrappers (bf16/fp16/ZeRO);
    # for plain fp32 without ZeRO the grads sit in .grad at the boundary and we measure them.
    own_grad_norm = t.precision == "fp32" and t.zero_stage == 0
    terms = sorted(criterion.weights)
    log = bar = None
    try:
        # ---- resume
        state = _restore(engine, ckpt, world, run)
        step, tokens_seen, wall_prior = state["step"], state["tokens_seen"], state["wall_time_s"]
        window, last_eval, skipped_steps = state["window"], state.get("last_eval"), state.get("skipped_steps", 0)
        log = MetricsLog(run, world.is_main, resume_step=step if ckpt is not None else None)

        def wall() -> float:
            return wall_prior + (time.time() - segment_start)

        def client_state() -> Dict[str, Any]:
            return {"step": step, "tokens_seen": tokens_seen, "wall_time_s": wall(), "window": window,
                    "last_eval": last_eval, "skipped_steps": skipped_steps, "config": cfg_dict,
                    "fingerprint": checkpoint.config_fingerprint(cfg_dict), "world_size": world.size}

        def run_eval() -> Dict[str, Any]:
            m = task.evaluate(engine, world)
            rec = {"kind": "eval", "step": step, "epoch": sampler.epochs(step), "tokens_seen": tokens_seen, **m,
                   "time_s": wall()}
            log.write(rec)
            if world.is_main:
                shown = [task.primary_metric, *(k for k in task.summary_keys if k != task.primary_metric)]
                bar.write(f"step {step}: eval " + "  ".join(f"{k} {m[k]:.4f}" for k in shown if k in m))
            return rec

        # ---- loop
        segment_start = time.time()
        bar = tqdm(total=t.max_steps, initial=step, unit="step", disable=not world.is_main, dynamic_ncols=True, desc=cfg.name)
        while step < t.max_steps:
            epoch, rows = sampler.global_batch(step)
            lr = engine.get_lr()[0]
            batches = [task.collate(mb, epoch) for mb in rank_micro_batches(rows, world.rank, world.size, accumulation)]
            sums, global_size, grad_norm = _forward_backward(engine, criterion, batches, terms, world.size, own_grad_norm)
            step += 1
            batch_tokens = task.tokens(rows)
            tokens_seen += batch_tokens
            # Step loss = Σ loss over every micro batch of every rank / global sample size.
            # The stop flag rides along, so every rank stops after the same step.
            reduced = distributed.all_reduce_sum(torch.cat([
                sums.cpu(), torch.tensor([float(stop_requested(signals_received))], dtype=torch.float64)])).tolist()
            stop = reduced[-1] > 0
            losses = _step_losses(reduced[:-1], terms, global_size, criterion.weights)
            finite = all(math.isfinite(v) for v in losses.values())
            if not finite and t.precision != "fp16":
                raise _non_finite(run, step, losses)
            if t.precision == "fp16" and (not finite or not engine.was_step_applied()):
                skipped_steps += 1  # the loss scaler found inf/NaN gradients and skipped the update
            _add_to_window(window, losses if finite else None, batch_tokens, task.flops(rows))
            bar.update(1)

            if step % t.log_every == 0 or step == t.max_steps:
                now = wall()
                mean_losses, rates = _window_means(window, now, world.size, peak)
                rec = {"kind": "train", "step": step, "epoch": sampler.epochs(step), "tokens_seen": tokens_seen,
                       **mean_losses, "lr": lr, "grad_norm": grad_norm, **rates}
                if t.precision == "fp16":
                    rec["skipped_steps"] = skipped_steps
                log.write(rec)
                bar.set_postfix(loss=f"{rec.get('loss', float('nan')):.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
                window = _empty_window(now)
            if step % t.eval_every == 0 or step == t.max_steps:
                last_eval = run_eval()
            if stop or step % t.checkpoint_every == 0 or step == t.max_steps:
                # save() ends with a barrier: no rank leaves before every rank's shard is on disk.
                checkpoint.save(engine, run, step, client_state(), t.keep_checkpoints, world)
            if stop and step < t.max_steps:
                bar.close()
                raise _preempted(run, step, signals_received, world.is_main)
        bar.close()

        if last_eval is None or last_eval["step"] != step:
            last_eval = run_eval()  # a resumed, already finished run with no eval recorded
        summary = _summary(task, step, tokens_seen, sampler.epochs(step), wall(), last_eval, num_parameters, world.size,
                           skipped_steps if t.precision == "fp16" else None)
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
        engine = None  # the last reference: an ablation's next arm must not hold this one's memory
        gc.collect()


def _check_machine(t, world) -> None:
    """What this machine cannot run raises UserError (``check_device``); what it runs but
    slowly (``device_warnings``: bf16 emulated on a CPU) is a one-line warning on rank 0."""
    check_device(t)
    if world.is_main:
        for line in device_warnings(t):
            print(line, file=sys.stderr, flush=True)


def _build_engine(task: Task, t, ds_config: Dict[str, Any], rank: int):
    """The task's trainable module (seeded with ``train.seed``, identical on every rank) in a
    DeepSpeed engine, its frozen modules on the engine's device in eval mode without gradients,
    then the per-rank seed (dropout differs between ranks; init and data order do not).
    Returns (engine, number of trainable-module parameters)."""
    _seed_all(t.seed)
    module = task.build_model()
    num_parameters = sum(p.numel() for p in module.parameters())
    engine = build_engine(module, t, ds_config)
    for frozen in task.frozen_modules().values():
        frozen.to(engine.device).eval().requires_grad_(False)
    torch.manual_seed(int(np.random.SeedSequence([t.seed, rank]).generate_state(1)[0]))
    return engine, num_parameters


def _restore(engine, ckpt: Optional[Path], world, run: Path) -> Dict[str, Any]:
    """The loop's counters at the start: from ``ckpt`` (engine state loaded into ``engine``)
    or those of a fresh run (step 0, an empty logging window)."""
    if ckpt is None:
        return {"step": 0, "tokens_seen": 0, "wall_time_s": 0.0, "skipped_steps": 0, "last_eval": None,
                "window": _empty_window(0.0)}
    state = checkpoint.load(engine, ckpt, world)
    state["window"].setdefault("flops", 0.0)  # checkpoints written before MFU logging
    if world.is_main:
        print(f"resumed {run} from {ckpt.name} (step {state['step']})")
    return state


def _summary(task: Any, step: int, tokens_seen: int, epochs: float, wall_time_s: float, last_eval: Dict[str, Any],
             num_parameters: int, world_size: int, skipped_steps: Optional[int]) -> Dict[str, Any]:
    """summary.json of a finished run (fields: ``pretrain.training.rundir``); ``skipped_steps``
    only for fp16 (None otherwise)."""
    return {"status": "done", "steps": step, "tokens_seen": tokens_seen, "epochs": epochs, "wall_time_s": wall_time_s,
            "final_eval": {k: last_eval[k] for k in task.summary_keys if k in last_eval},
            **task.summary_fields(), "num_parameters": num_parameters,
            "hardware": hardware.describe_hardware(world_size),
            **({"skipped_steps": skipped_steps} if skipped_steps is not None else {})}


def _empty_window(start_time_s: float) -> Dict[str, Any]:
    """A logging window opened at ``start_time_s`` (training seconds): sums of steps with
    finite losses, tokens, model FLOPs and per-key losses, averaged when the window is logged."""
    return {"steps": 0, "tokens": 0, "flops": 0.0, "losses": {}, "start_time_s": start_time_s}


def _add_to_window(window: Dict[str, Any], losses: Optional[Dict[str, float]], tokens: int, flops: float) -> None:
    """Count one step into the logging window; ``losses`` None for a step the fp16 loss
    scaler skipped (its losses are not finite and stay out of the means)."""
    if losses is not None:
        for k, v in losses.items():
            window["losses"][k] = window["losses"].get(k, 0.0) + v
        window["steps"] += 1
    window["tokens"] += tokens
    window["flops"] += flops


def _preempted(run: Path, step: int, signals_received: List[str], is_main: bool) -> Preempted:
    """The exception a signalled run stops with, after its checkpoint of ``step`` (rank 0 says so)."""
    name = signals_received[0] if signals_received else "a signal on another rank"
    if is_main:
        print(f"{name}: checkpoint {checkpoint.tag(step)} saved; resume with --resume")
    return Preempted(run, step, name)


def _check_resumable(run: Path, ckpt: Path, cfg_dict: Dict[str, Any], max_steps: int) -> None:
    """Raise UserError if ``ckpt`` was written under another config (naming the differing
    keys) or is past ``max_steps``."""
    saved = checkpoint.read_client_state(ckpt)
    diff = checkpoint.config_differences(saved["config"], cfg_dict)
    if diff:
        raise UserError(f"cannot resume {run}: the config differs from its checkpoint in {'; '.join(diff)}")
    if saved["step"] > max_steps:
        raise UserError(f"{ckpt.name} is past train.max_steps={max_steps}; raise max_steps or use another run_dir")


def _start_run_dir(run: Path, cfg, fresh: bool) -> None:
    """Rank 0: write config.yaml, drop a stale summary and, on a fresh start, old TensorBoard events."""
    run.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run / CONFIG, to_yaml(cfg))
    (run / SUMMARY).unlink(missing_ok=True)
    if fresh:
        shutil.rmtree(run / TENSORBOARD, ignore_errors=True)


def _forward_backward(engine, criterion, batches: List[Dict[str, torch.Tensor]], terms: List[str], world_size: int,
                      own_grad_norm: bool) -> Tuple[torch.Tensor, Dict[str, float], Optional[float]]:
    """One optimizer step over this rank's micro batches (torchtitan's ``forward_backward_step``).

    The step's global sample size per term is summed over every micro batch and rank from the
    batches alone, before any backward; each micro batch then back-propagates its loss sums
    over those global counts (``normalized_loss``) × world size (DeepSpeed averages gradients
    over the data-parallel ranks), without DeepSpeed's 1/accumulation scaling.

    Returns: float64 loss sums per term ``[len(terms)]`` of this rank (on the device), the
    global sample size per term, and the gradient norm before clipping (None if unknown).
    """
    device = engine.device
    local = [sum(float(criterion.sample_size(b)[k]) for b in batches) for k in terms]
    global_size = dict(zip(terms, distributed.all_reduce_sum(torch.tensor(local, dtype=torch.float64)).tolist()))
    sums = torch.zeros(len(terms), dtype=torch.float64, device=device)
    grad_norm = None
    for i, batch in enumerate(batches):
        loss_sum, _, _ = criterion(engine, to_device(batch, device))
        loss = normalized_loss(loss_sum, global_size, criterion.weights) * world_size
        engine.backward(loss, scale_wrt_gas=False)
        if own_grad_norm and i == len(batches) - 1:
            grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
            grad_norm = float(torch.nn.utils.get_total_norm(grads))
        engine.step()  # DeepSpeed updates the weights after the last micro batch only
        # summed on the device in float64: one host sync per step, not per micro batch
        sums += torch.stack([loss_sum[k].detach().double() for k in terms])
    if grad_norm is None:
        gn = engine.get_global_grad_norm()
        grad_norm = None if gn is None else float(gn)
    return sums, global_size, grad_norm


def _step_losses(reduced: List[float], terms: List[str], global_size: Dict[str, float],
                 weights: Dict[str, float]) -> Dict[str, float]:
    """``loss`` (the weighted total) and ``<term>_loss`` per term, in nats per sample: the
    loss sums over every micro batch and rank divided by the global sample size."""
    per_term = {k: s / global_size[k] if global_size[k] > 0 else 0.0 for k, s in zip(terms, reduced)}
    return {"loss": sum(weights[k] * v for k, v in per_term.items()), **{f"{k}_loss": v for k, v in per_term.items()}}


def _window_means(window: Dict[str, Any], now: float, world_size: int,
                  peak: Optional[float]) -> Tuple[Dict[str, float], Dict[str, float]]:
    """A logging window's mean losses (nats) and its rates: tokens/s, model TFLOP/s per device
    (``pretrain.training.mfu``: the window's FLOPs over all ranks / ranks), ``time_s`` (= ``now``,
    training seconds) and MFU (0-1, with a known peak)."""
    seconds = max(now - window["start_time_s"], 1e-9)
    device_flops = window["flops"] / seconds / world_size
    losses = {k: v / max(1, window["steps"]) for k, v in sorted(window["losses"].items())}
    rates = {"tokens_per_s": window["tokens"] / seconds, "model_tflops": device_flops / 1e12, "time_s": now}
    if peak is not None:
        rates["mfu"] = device_flops / peak
    return losses, rates


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
