"""``pretrain compare``: compose every shape, measure it, read the fine-tuning jobs, write the
table (``pretrain.comparison.report``)."""

from __future__ import annotations

import copy
import platform
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from common.errors import UserError
from pretrain.comparison import measure, report, scores, shapes

INT8_MODELS = ("bert", "distilbert")  # the int8 rows
SEQ = 128
BATCH = 32


def hardware() -> str:
    """CPU model name (``/proc/cpuinfo``, else ``platform.processor``), the CPUs this process
    may use, and the OS."""
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import os

        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        import os

        cpus = os.cpu_count() or 0
    return f"{name or platform.processor() or 'unknown CPU'}, {cpus} CPU(s) available to the process, {platform.system()}"


def command_line(models: Sequence[str], groups: Sequence[str], repeats: int, warmup: int, threads: Optional[int],
                 runs_root: Optional[str], run_flags: Sequence[str], out: Path, int8: bool = True) -> str:
    """The ``pretrain compare`` command that regenerates the files, shell-quoted."""
    argv = ["pretrain", "compare", "--presets", *groups, "--models", *models, "--repeats", str(repeats),
            "--warmup", str(warmup)]
    if threads is not None:
        argv += ["--threads", str(threads)]
    if runs_root is not None:
        argv += ["--runs", str(runs_root)]
    for r in run_flags:
        argv += ["--run", r]
    argv += ["--out", str(out)] + ([] if int8 else ["--no-int8"])
    return shlex.join(argv)


def _shape_dict(s: shapes.Shape) -> Dict[str, object]:
    c = s.cfg
    return {"L": c.num_hidden_layers, "H": c.hidden_size, "A": c.num_attention_heads, "FFN": c.intermediate_size,
            "E": c.embedding_size if c.embedding_size is not None else c.hidden_size, "vocab": c.vocab_size,
            "types": c.type_vocab_size, "sharing": c.sharing, "command": s.command}


@dataclass
class _Entry:
    """One model variant of a group being measured: its timers by (device, batch)."""

    shape: shapes.Shape
    variant: str
    model: torch.nn.Module
    counts: Dict[str, int]
    disk_bytes: int
    disk_format: str
    timers: Dict[tuple, measure.Timer] = field(default_factory=dict)


def _entries(group_shapes: List[shapes.Shape], int8: bool, gpu: bool, tmp: Path, ctx: report.Context) -> List[_Entry]:
    """Build, count and save every model variant of one group, with its timers."""
    out: List[_Entry] = []
    for s in group_shapes:
        model = measure.classifier(s.cfg)
        counts = measure.parameter_counts(model)
        out.append(_Entry(s, "fp32", model, counts, measure.safetensors_bytes(model, tmp), "safetensors fp32"))
        if s.generator is not None:
            g = s.generator
            ctx.generators.append({"group": s.group, **measure.electra_parameters(s.cfg, s.electra),
                                   "shape": f"{g.num_hidden_layers} / {g.hidden_size} / {g.num_attention_heads} / "
                                            f"{g.intermediate_size}"})
        if int8 and s.model in INT8_MODELS:
            q = measure.quantize_int8(model)
            out.append(_Entry(s, "int8", q, counts, measure.torch_save_bytes(q, tmp), "torch.save int8"))
    for e in out:
        for batch in (1, BATCH):
            e.timers[("cpu", batch)] = measure.Timer(e.model, e.shape.cfg, batch, SEQ)
            if gpu and e.variant == "fp32":  # dynamic int8 kernels are CPU-only
                e.timers[("cuda", batch)] = measure.Timer(copy.deepcopy(e.model), e.shape.cfg, batch, SEQ, "cuda")
    return out


def _time_group(entries: List[_Entry], repeats: int, warmup: int, bar) -> List[float]:
    """Warm every timer, then ``repeats`` rounds each timing every timer once (interleaved,
    so load changes fall on every model alike). Returns the 1-minute load average at the
    start of each round."""
    timers = [t for e in entries for t in e.timers.values()]
    for t in timers:
        t.warm(warmup)
        bar.update(1)
    loads = []
    for _ in range(repeats):
        loads.append(measure.load_average()[0])
        for t in timers:
            t.run()
            bar.update(1)
    return loads


def _scores_of(s: shapes.Shape, runs_root: Optional[str], explicit: Dict[str, Path]):
    """(jobs by task, random-init controls by task, note): the finished fine-tuning jobs of
    ``s``'s run, or why none."""
    run = scores.run_for(s, Path(runs_root) if runs_root else None, explicit)
    if run is None:
        return {}, {}, "no runs given (--runs / --run)"
    why = scores.shape_mismatch(run, s.cfg)
    if why:
        return {}, {}, why
    jobs = scores.read_jobs(run)
    return jobs, scores.read_controls(run), "" if jobs else f"no finished job in {run}/finetune/"


def _row(e: _Entry, jobs: Dict[str, scores.JobScore], controls: Dict[str, scores.JobScore], note: str) -> report.Row:
    s = e.shape
    c1, c32 = e.timers[("cpu", 1)].timing, e.timers[("cpu", BATCH)].timing
    g1, g32 = e.timers.get(("cuda", 1)), e.timers.get(("cuda", BATCH))
    int8_scores = {t: scores.int8_rescore(j) for t, j in jobs.items()} if e.variant == "int8" else {}
    return report.Row(s.group, s.model, s.label, e.variant, _shape_dict(s), e.counts["total"], e.counts["non_embedding"],
                      e.disk_bytes, e.disk_format, c1.ms_per_sequence, c32.sequences_per_s, c1.runs, c32.runs,
                      g1.timing.ms_per_sequence if g1 else None, g32.timing.sequences_per_s if g32 else None,
                      jobs if e.variant == "fp32" else {}, int8_scores, note, controls if e.variant == "fp32" else {})


def compare(models: Sequence[str] = shapes.MODELS, groups: Sequence[str] = ("small", shapes.BASE), repeats: int = 5,
            warmup: int = 2, threads: Optional[int] = None, runs_root: Optional[str] = None,
            run_flags: Sequence[str] = (), out: str | Path = report.DEFAULT_OUT, int8: bool = True) -> List[Path]:
    """Measure ``models`` in every shape group of ``groups`` and write ``out``.md/.csv.

    Args:
        models: keys of ``shapes.MODELS``; groups: preset names and/or ``base``.
        repeats: timed runs per measurement (>= 1); warmup: untimed calls before them (>= 0).
        threads: ``torch.set_num_threads`` (None: leave torch's setting).
        runs_root: root of the pretraining runs whose fine-tuning jobs give the scores; None =
            read none (every score cell says ``not run``). run_flags: ``MODEL=DIR`` overrides.
        int8: add the dynamic int8 rows of ``INT8_MODELS``.
    Returns:
        The two files written.
    Raises:
        UserError: bad values, an unknown model or preset, a missing runs directory; all
            checked before anything is measured.
    """
    if repeats < 1:
        raise UserError(f"--repeats {repeats} must be >= 1")
    if warmup < 0:
        raise UserError(f"--warmup {warmup} must be >= 0")
    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads} must be >= 1")
    if not models or not groups:
        raise UserError("name at least one model (--models) and one shape group (--presets)")
    explicit = scores.parse_run_flags(list(run_flags), list(shapes.MODELS))
    scores.check_runs_root(runs_root, explicit)
    todo = shapes.compose_all(list(models), list(groups))
    if threads is not None:
        torch.set_num_threads(threads)
    gpu = torch.cuda.is_available()
    out = Path(out)
    cmd = command_line(models, groups, repeats, warmup, threads, runs_root, run_flags, out, int8)
    ctx = report.Context(cmd, hardware(), torch.get_num_threads(), torch.__version__,
                         torch.cuda.get_device_name(0) if gpu else None, measure.load_average(), [], repeats, warmup, SEQ,
                         measure.MIN_RUN_S)
    rows: List[report.Row] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="compare-") as tmp:
        for group in dict.fromkeys(groups):
            group_shapes = [s for s in todo if s.group == group]
            entries = _entries(group_shapes, int8, gpu, Path(tmp), ctx)
            n = sum(len(e.timers) for e in entries) * (repeats + 1)
            with tqdm(total=n, desc=f"compare {group}", unit="run") as bar:
                ctx.round_loads[group] = _time_group(entries, repeats, warmup, bar)
            found = {s.model: _scores_of(s, runs_root, explicit) for s in group_shapes}
            rows += [_row(e, *found[e.shape.model]) for e in entries]
            del entries  # a group's models (base: ~2 GB) before the next group's
    ctx.load_after = measure.load_average()
    ctx.wall_s = time.perf_counter() - start
    return report.write(rows, ctx, out)
