"""``results/model_comparison.md`` and ``.csv`` from measured rows: the tables, the machine
they were measured on, the published claims beside ours, and the command that regenerates
them. Every number comes from a ``Row`` (measured) or ``CLAIMS`` (quoted from the papers,
labelled as theirs); a cell without a measurement says ``not run``.
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from common.atomic import write_text_atomic

NOT_RUN = "not run"
DEFAULT_OUT = Path("results") / "model_comparison"

# The tutorials' claims, as the papers print them (theirs, never computed here).
DISTILBERT_ABSTRACT = ("Sanh et al. 2019, abstract: \"reduce the size of a BERT model by 40%, while retaining 97% of "
                       "its language understanding capabilities and being 60% faster\"")
# Lan et al. 2020 (ICLR version) Table 2, "Parameters" and "Speedup" columns; §4.7 reads the
# speedup as training data throughput relative to BERT-large.
ALBERT_TABLE2 = [("BERT-base", "108M", "4.7x"), ("BERT-large", "334M", "1.0"), ("ALBERT-base", "12M", "5.6x"),
                 ("ALBERT-large", "18M", "1.7x"), ("ALBERT-xlarge", "60M", "0.6x"), ("ALBERT-xxlarge", "235M", "0.3x")]


@dataclass
class Row:
    """One measured model variant (``variant``: ``fp32`` or ``int8``) of one shape group.

    Sizes: ``params`` / ``non_embedding`` (counts), ``disk_bytes`` in ``disk_format``.
    CPU timings: ``cpu_b1_ms`` (ms per sequence at batch 1), ``cpu_b32`` (sequences/s at
    batch 32), each a median over ``cpu_b1_runs`` / ``cpu_b32_runs`` (seconds per call);
    ``gpu_*`` the same on CUDA when available. ``scores``: task → ``JobScore``; ``int8_scores``: task →
    ``Int8Score`` or the reason it is missing; ``score_note``: why no scores were read;
    ``controls``: task → ``JobScore`` of the run's random-init control job.
    """

    group: str
    model: str
    label: str
    variant: str
    shape: Dict[str, Any]
    params: int
    non_embedding: int
    disk_bytes: int
    disk_format: str
    cpu_b1_ms: float
    cpu_b32: float
    cpu_b1_runs: List[float]
    cpu_b32_runs: List[float]
    gpu_b1_ms: Optional[float] = None
    gpu_b32: Optional[float] = None
    scores: Dict[str, Any] = field(default_factory=dict)
    int8_scores: Dict[str, Union[Any, str]] = field(default_factory=dict)
    score_note: str = ""
    controls: Dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.label + (" int8 (dynamic)" if self.variant == "int8" else "")


@dataclass
class Context:
    """How the rows were measured: ``command`` (regenerates the files), ``hardware``,
    ``threads`` (``torch.get_num_threads``), ``torch`` version, ``gpu`` (device name or
    None), ``load_before``/``load_after`` (1/5/15-minute load averages), ``repeats``,
    ``warmup``, ``seq`` (tokens per sequence), ``min_run_s`` (shortest batch-1 run,
    ``measure.MIN_RUN_S``), ``generators`` (ELECTRA generator rows),
    ``round_loads`` (group → the 1-minute load average at the start of each timed round),
    ``wall_s`` (seconds the measurement took)."""

    command: str
    hardware: str
    threads: int
    torch: str
    gpu: Optional[str]
    load_before: List[float]
    load_after: List[float]
    repeats: int
    warmup: int
    seq: int
    min_run_s: float = 0.0
    generators: List[Dict[str, Any]] = field(default_factory=list)
    round_loads: Dict[str, List[float]] = field(default_factory=dict)
    wall_s: float = 0.0


def reference(rows: Sequence[Row], row: Row) -> Optional[Row]:
    """The float32 BERT row of ``row``'s group with the same hidden size (speedups are
    relative to it), or None."""
    for r in rows:
        if r.group == row.group and r.model == "bert" and r.variant == "fp32" and r.shape["H"] == row.shape["H"]:
            return r
    return None


def speedups(rows: Sequence[Row], row: Row, gpu: bool = False) -> Optional[tuple]:
    """``(batch-1 latency ratio, batch-32 throughput ratio)`` of ``row`` against BERT of
    the same hidden size (> 1: faster than BERT), or None without a reference."""
    ref = reference(rows, row)
    if ref is None:
        return None
    if gpu:
        if ref.gpu_b1_ms is None or row.gpu_b1_ms is None:
            return None
        return ref.gpu_b1_ms / row.gpu_b1_ms, row.gpu_b32 / ref.gpu_b32
    return ref.cpu_b1_ms / row.cpu_b1_ms, row.cpu_b32 / ref.cpu_b32


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f}"


def _m(n: int) -> str:
    return f"{n:,} ({n / 1e6:.1f}M)"


def _x(v: Optional[float]) -> str:
    return "—" if v is None else f"{v:.2f}x"


def _spread(runs: Sequence[float]) -> str:
    """The range of the timed runs relative to their median, e.g. ``range 7%``."""
    med = statistics.median(runs)
    return f"range {100 * (max(runs) - min(runs)) / med:.0f}%"


def groups_of(rows: Sequence[Row]) -> List[str]:
    """Shape groups in first-seen order."""
    out: List[str] = []
    for r in rows:
        if r.group not in out:
            out.append(r.group)
    return out


def _group_title(group: str) -> str:
    from pretrain.comparison.shapes import BASE

    return "published base shapes (recipes at paper scale)" if group == BASE else f"`--preset {group}` shapes"


def _shapes_table(rows: Sequence[Row]) -> List[str]:
    out = ["| shapes | model | composed as | L | H | A | FFN | E | vocab | token types | sharing |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.variant != "fp32":
            continue
        s = r.shape
        out.append(f"| {r.group} | {r.label} | `{s['command']}` | {s['L']} | {s['H']} | {s['A']} | {s['FFN']} | {s['E']} | "
                   f"{s['vocab']} | {s['types']} | {s['sharing']} |")
    return out


def _speed_table(rows: Sequence[Row], group: str, ctx: Context) -> List[str]:
    out = [f"### {_group_title(group)}", "",
           "| model | parameters | non-embedding | disk (MB) | format | CPU ms/seq, batch 1 | CPU seq/s, batch 32 | "
           "speedup vs BERT, batch 1 | speedup vs BERT, batch 32 |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.group != group:
            continue
        sp = speedups(rows, r)
        out.append(f"| {r.name} | {_m(r.params)} | {_m(r.non_embedding)} | {_mb(r.disk_bytes)} | {r.disk_format} | "
                   f"{r.cpu_b1_ms:.2f} ({_spread(r.cpu_b1_runs)}) | {r.cpu_b32:.2f} ({_spread(r.cpu_b32_runs)}) | "
                   f"{_x(sp[0] if sp else None)} | {_x(sp[1] if sp else None)} |")
    loads = ctx.round_loads.get(group)
    if loads:
        out += ["", f"1-minute load average at the start of each timed round: {', '.join(f'{x:.2f}' for x in loads)}."]
    return out


def _gpu_section(rows: Sequence[Row], ctx: Context) -> List[str]:
    if ctx.gpu is None:
        return ["No GPU rows: `torch.cuda.is_available()` was False on this machine. On a machine with CUDA the "
                "same command adds them (float32; dynamic int8 runs on CPU only)."]
    out = [f"GPU: {ctx.gpu}, float32.", "",
           "| shapes | model | GPU ms/seq, batch 1 | GPU seq/s, batch 32 | speedup vs BERT, batch 1 | speedup vs BERT, batch 32 |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        if r.gpu_b1_ms is None:
            continue
        sp = speedups(rows, r, gpu=True)
        out.append(f"| {r.group} | {r.name} | {r.gpu_b1_ms:.2f} | {r.gpu_b32:.2f} | {_x(sp[0] if sp else None)} | "
                   f"{_x(sp[1] if sp else None)} |")
    return out


def _generator_table(ctx: Context) -> List[str]:
    if not ctx.generators:
        return []
    out = ["### ELECTRA's generator (pretraining only; fine-tuning and the rows above use the discriminator)", "",
           "| shapes | generator L / H / A / FFN | generator parameters | discriminator (pretraining, with its "
           "replaced-token head) | both (embeddings once) |", "|---|---|---|---|---|"]
    for g in ctx.generators:
        out.append(f"| {g['group']} | {g['shape']} | {_m(g['generator'])} | {_m(g['discriminator'])} | {_m(g['pair'])} |")
    out += ["", "The generator reads the discriminator's embedding tables (Clark et al. 2020 §3.2), so its count "
            "is its own blocks, E→H projection and MLM head."]
    return out


def _score_cell(r: Row, task: str) -> str:
    s = r.scores.get(task)
    if s is None:
        return NOT_RUN
    return f"{100 * s.score:.2f} ({s.metric}, median of {s.seeds}, lr {s.lr:g})"


def _scores_section(rows: Sequence[Row]) -> List[str]:
    fp32 = [r for r in rows if r.variant == "fp32"]
    tasks = sorted({t for r in fp32 for t in r.scores})
    out = ["Median over seeds at the chosen learning rate, from each model's finished `pretrain finetune` jobs "
           "(`<run>/finetune/<task>/scores.json`), x100."]
    if not tasks:
        out += ["", "| shapes | model | score | why |", "|---|---|---|---|"]
        for r in fp32:
            out.append(f"| {r.group} | {r.label} | {NOT_RUN} | {r.score_note or 'no finished fine-tuning job'} |")
        return out
    out += ["", "| shapes | model | " + " | ".join(tasks) + " | share of BERT's score | note |",
            "|---|---|" + "---|" * len(tasks) + "---|---|"]
    for r in fp32:
        ref = reference(rows, r)
        shares = []
        for t in tasks:
            if ref is not None and ref is not r and t in r.scores and t in ref.scores and ref.scores[t].score:
                shares.append(f"{t} {100 * r.scores[t].score / ref.scores[t].score:.1f}%")
        out.append(f"| {r.group} | {r.label} | " + " | ".join(_score_cell(r, t) for t in tasks) +
                   f" | {', '.join(shares) or '—'} | {r.score_note} |")
    return out + _controls_section(fp32)


def _controls_section(fp32: Sequence[Row]) -> List[str]:
    """The random-init controls of the runs whose scores are shown: a share of BERT's score
    means little where the control is ahead of both (pretraining bought nothing yet)."""
    pairs = [(r, t, c) for r in fp32 for t, c in sorted(r.controls.items()) if t in r.scores]
    if not pairs:
        return []
    out = ["", "Random-init control: the same run's shape and tokenizer fine-tuned from random weights "
           "(`<run>/finetune/<task>-random-init/`, the control stage of `pretrain ablate` or `pretrain finetune "
           "--random-init`). Where the control is ahead, pretraining has not paid off at this scale and a share of "
           "BERT's score says little about language understanding.", "",
           "| shapes | model | task | model | control | model − control |", "|---|---|---|---|---|---|"]
    for r, t, c in pairs:
        m = r.scores[t]
        out.append(f"| {r.group} | {r.label} | {t} ({m.metric}) | {100 * m.score:.2f} ({m.precision or '?'}, "
                   f"lr {m.lr:g}) | {100 * c.score:.2f} ({c.precision or '?'}, lr {c.lr:g}) | "
                   f"{100 * (m.score - c.score):+.2f} |")
    return out


def _int8_section(rows: Sequence[Row]) -> List[str]:
    out = ["Each seed's fine-tuned weights at the job's chosen learning rate, scored on the job's evaluation split "
           "as float32 and after dynamic int8 quantization (x100; change = int8 − float32, medians over seeds).", "",
           "| shapes | model | task | float32 | int8 | change | seeds | float32 equals the job's score |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.variant != "int8":
            continue
        if not r.int8_scores:
            out.append(f"| {r.group} | {r.label} | — | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} | — | "
                       f"{r.score_note or 'no finished fine-tuning job'} |")
        for task, s in sorted(r.int8_scores.items()):
            if isinstance(s, str):
                out.append(f"| {r.group} | {r.label} | {task} | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} | — | {s} |")
                continue
            out.append(f"| {r.group} | {r.label} | {task} ({s.metric}) | {100 * s.fp32_median:.2f} | "
                       f"{100 * s.int8_median:.2f} | {100 * (s.int8_median - s.fp32_median):+.2f} | {len(s.fp32)} | "
                       f"{'yes' if s.fp32_matches_job else 'NO: re-scored float32 differs from the job'} |")
    return out


def _find(rows: Sequence[Row], group: str, model: str, variant: str = "fp32") -> Optional[Row]:
    return next((r for r in rows if r.group == group and r.model == model and r.variant == variant), None)


def _claims_section(rows: Sequence[Row]) -> List[str]:
    out = ["Their numbers are quoted from the papers; ours are this file's measurements (inference of the "
           "classification model on this CPU). Parameters are counted differently by the papers (see the sources).", "",
           "| claim (theirs) | source | ours | shapes |", "|---|---|---|---|"]
    for group in groups_of(rows):
        bert, distil, albert = _find(rows, group, "bert"), _find(rows, group, "distilbert"), _find(rows, group, "albert")
        if bert and distil:
            smaller = 100 * (1 - distil.params / bert.params)
            sp = speedups(rows, distil)
            out.append(f"| DistilBERT: 40% smaller than BERT | {DISTILBERT_ABSTRACT} | {smaller:.1f}% fewer parameters "
                       f"({_m(distil.params)} vs {_m(bert.params)}) | {group} |")
            out.append(f"| DistilBERT: 60% faster than BERT | same | {_x(sp[0])} BERT's speed at batch 1, {_x(sp[1])} "
                       f"at batch 32 (1.60x = 60% faster) | {group} |")
            shares = [f"{t}: {100 * distil.scores[t].score / bert.scores[t].score:.1f}%" for t in sorted(distil.scores)
                      if t in bert.scores and bert.scores[t].score]
            out.append(f"| DistilBERT retains 97% of BERT's language understanding (GLUE) | same | "
                       f"{', '.join(shares) if shares else NOT_RUN + ' (needs both models fine-tuned on a task)'} | {group} |")
        if bert and albert:
            sp = speedups(rows, albert)
            table2 = "; ".join(f"{m} {p}, speedup {s}" for m, p, s in ALBERT_TABLE2)
            out.append(f"| ALBERT: fewer parameters but not faster | Lan et al. 2020, Table 2 (\"Speedup\": training "
                       f"data throughput relative to BERT-large, §4.7): {table2} | {100 * albert.params / bert.params:.1f}% "
                       f"of BERT's parameters; {_x(sp[0])} BERT's speed at batch 1, {_x(sp[1])} at batch 32 | {group} |")
    return out


def markdown(rows: Sequence[Row], ctx: Context) -> str:
    """The whole ``model_comparison.md``."""
    load_note = ("The machine is shared (a background training job and other agents use its cores), so the "
                 "timings are noisy: the load averages before and after and at the start of every timed round "
                 "are recorded. The models of a group are timed round-robin (one run of each per round), so a "
                 "change of load falls on all of them alike; the ratios are steadier than the absolute numbers.")
    lines = [
        "# Size, speed and quality: BERT, RoBERTa, ALBERT, DistilBERT, ELECTRA", "",
        "<!-- generated by `pretrain compare`; edits are overwritten -->",
        f"Regenerate with `{ctx.command}` (every number below is measured by it or read from fine-tuning jobs; "
        "the papers' numbers are labelled as theirs).", "",
        f"- Hardware: {ctx.hardware}; torch {ctx.torch}; {ctx.threads} CPU thread(s) (`torch.get_num_threads()`); "
        f"GPU: {ctx.gpu or 'none'}.",
        f"- Load average (1/5/15 min) before: {' / '.join(map(str, ctx.load_before))}, after: "
        f"{' / '.join(map(str, ctx.load_after))}. {load_note}",
        f"- Timing: sequence length {ctx.seq}, float32 (int8 rows: dynamic int8 on every `nn.Linear`), "
        f"`torch.inference_mode`, {ctx.warmup} warm-up call(s), median of {ctx.repeats} timed runs "
        f"(a batch-1 run repeats the call for at least {ctx.min_run_s:g} s and divides). Measurement took "
        f"{ctx.wall_s / 60:.1f} min.",
        "- Measured model: the encoder with a two-class sequence-classification head "
        "(`pretrain.models.heads.FineTuneModel`, what `pretrain finetune` trains; for ELECTRA the discriminator), "
        "random weights. Parameters count every tensor once; non-embedding leaves out the word and position tables. "
        "Disk: float32 weights as one safetensors file; int8 rows: `torch.save` of the quantized state dict "
        "(MB = 10^6 bytes).", "",
        "## Shapes", "",
        *_shapes_table(rows), "",
        "## Size and CPU speed", "",
        "Speedup: BERT's batch-1 latency over the model's, and the model's batch-32 throughput over BERT's, "
        "against BERT of the same shape group and hidden size (> 1 = faster). In brackets: the spread of the "
        "timed runs, (slowest − fastest) / median; models of identical compute (BERT, RoBERTa and ELECTRA's "
        "discriminator at one hidden size) differing by about that much are within the noise.", "",
    ]
    for g in groups_of(rows):
        lines += [*_speed_table(rows, g, ctx), ""]
    lines += [*_generator_table(ctx), "", "## GPU", "", *_gpu_section(rows, ctx), "",
              "## Downstream scores", "", *_scores_section(rows), "",
              "## Dynamic int8: score change", "", *_int8_section(rows), "",
              "## The tutorials' claims beside ours", "", *_claims_section(rows), ""]
    return "\n".join(lines)


CSV_FIELDS = ["group", "model", "variant", "L", "H", "A", "FFN", "E", "vocab", "params", "non_embedding", "disk_bytes",
              "disk_format", "cpu_threads", "cpu_b1_ms_per_seq", "cpu_b32_seq_per_s", "cpu_b1_runs_s", "cpu_b32_runs_s",
              "speedup_vs_bert_b1", "speedup_vs_bert_b32", "gpu_b1_ms_per_seq", "gpu_b32_seq_per_s"]


def csv_text(rows: Sequence[Row], ctx: Context) -> str:
    """One CSV line per row, full precision; score columns ``<task>_score`` (0-1),
    ``<task>_control_score`` (the run's random-init control, 0-1) and, for int8 rows,
    ``<task>_int8_change``; an empty cell = not measured / not run."""
    tasks = sorted({t for r in rows for t in list(r.scores) + list(r.int8_scores)})
    fields = (CSV_FIELDS + [f"{t}_score" for t in tasks] + [f"{t}_control_score" for t in tasks]
              + [f"{t}_int8_change" for t in tasks])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        sp = speedups(rows, r)
        s = r.shape
        rec: Dict[str, Any] = {
            "group": r.group, "model": r.model, "variant": r.variant, "L": s["L"], "H": s["H"], "A": s["A"],
            "FFN": s["FFN"], "E": s["E"], "vocab": s["vocab"], "params": r.params, "non_embedding": r.non_embedding,
            "disk_bytes": r.disk_bytes, "disk_format": r.disk_format, "cpu_threads": ctx.threads,
            "cpu_b1_ms_per_seq": r.cpu_b1_ms, "cpu_b32_seq_per_s": r.cpu_b32,
            "cpu_b1_runs_s": " ".join(f"{x:.6g}" for x in r.cpu_b1_runs),
            "cpu_b32_runs_s": " ".join(f"{x:.6g}" for x in r.cpu_b32_runs),
            "speedup_vs_bert_b1": sp[0] if sp else "", "speedup_vs_bert_b32": sp[1] if sp else "",
            "gpu_b1_ms_per_seq": r.gpu_b1_ms if r.gpu_b1_ms is not None else "",
            "gpu_b32_seq_per_s": r.gpu_b32 if r.gpu_b32 is not None else "",
        }
        for t in tasks:
            score = r.scores.get(t)
            rec[f"{t}_score"] = score.score if score is not None and r.variant == "fp32" else ""
            control = r.controls.get(t)
            rec[f"{t}_control_score"] = control.score if control is not None and score is not None else ""
            i8 = r.int8_scores.get(t)
            rec[f"{t}_int8_change"] = (i8.int8_median - i8.fp32_median) if i8 is not None and not isinstance(i8, str) else ""
        w.writerow(rec)
    return buf.getvalue()


def write(rows: Sequence[Row], ctx: Context, out: Path) -> List[Path]:
    """Write ``out.md`` and ``out.csv`` (``out`` without suffix), each through a temporary
    file and a rename, after both are rendered (a failure leaves the old pair as it was);
    returns both paths."""
    out = Path(out)
    md, cs = out.with_name(out.name + ".md"), out.with_name(out.name + ".csv")
    texts = {cs: csv_text(rows, ctx), md: markdown(rows, ctx)}  # both rendered before either is replaced
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, text in texts.items():
        write_text_atomic(path, text)
    return [md, cs]
