"""``pretrain``: train a run, run an ablation, rebuild result tables, inspect models, export
checkpoints, and run the same as Slurm jobs.

    pretrain train CONFIG [--preset NAME] [--resume] [key=value ...]
    pretrain ablate ABLATION --preset NAME [--runs DIR] [--results DIR] [--time-budget 2h] [key=value ...]
    pretrain tables [--runs DIR] [--results DIR] [--collect SRC]
    pretrain describe MODEL [key=value ...] [--sentence none|nsp|sop] [--markdown]
    pretrain describe --all [--markdown]
    pretrain compare [--presets small base] [--models ...] [--repeats N] [--runs DIR] [--out PATH]
    pretrain export CKPT OUT --format hf [--tokenizer PATH] [--drop-sentence-head]
    pretrain finetune CKPT|HF_DIR --task NAME [--seeds N] [--preset smoke|small] [--random-init] [key=value ...]
    pretrain probe blimp CKPT|HF_DIR [--limit N] [--random-init]
    pretrain probe sentence CKPT|HF_DIR [...] [--corpus SPEC --validation-fraction F]
    pretrain submit CONFIG|ABLATION [--preset NAME] [--nodes N] [--gpus-per-node G] ... [--dry-run] [key=value ...]
    pretrain status TARGET [--runs DIR]

``pretrain COMMAND --help`` describes each command and its options. Bad input ends with one
``error: ...`` line and exit code 2; under a launcher (torchrun, deepspeed) only rank 0 prints it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from common.errors import UserError, launcher_rank, run_cli


def _train(args: argparse.Namespace) -> None:
    from pretrain.config import load_run_config, run_dir
    from pretrain.training.loop import train

    cfg = load_run_config(args.config, args.preset, args.overrides)
    summary = train(cfg, resume=args.resume)
    if launcher_rank() == 0:
        print(outputs_report(run_dir(cfg), summary))


def outputs_report(run: Path, summary: Optional[dict] = None) -> str:
    """Where a finished ``pretrain train`` left its outputs (file names from
    ``pretrain.training.rundir``), as printed at its end."""
    from pretrain.training import rundir

    ckpts = sorted(d.name for d in (run / rundir.CHECKPOINTS).glob("step-*") if d.is_dir())
    lines = [f"outputs of {run}/:"]
    lines.append(f"  config       {run / rundir.CONFIG}")
    lines.append(f"  metrics      {run / rundir.METRICS}  (TensorBoard: tensorboard --logdir {run / rundir.TENSORBOARD})")
    lines.append(f"  summary      {run / rundir.SUMMARY}")
    if ckpts:
        lines.append(f"  checkpoints  {run / rundir.CHECKPOINTS}/ ({', '.join(ckpts)})")
    if summary and summary.get("data_dir"):
        lines.append(f"  data         {summary['data_dir']}")
    return "\n".join(lines)


def _ablate(args: argparse.Namespace) -> None:
    from pretrain.ablations.runner import run_ablation

    run_ablation(args.ablation, args.preset, args.overrides, runs_root=args.runs, results_dir=args.results,
                 evaluate=args.evaluate, time_budget=args.time_budget)


def _tables(args: argparse.Namespace) -> None:
    from pretrain.ablations.rebuild import rebuild_tables

    if args.collect:
        from pretrain.ablations.collect import collect_logs

        copied = collect_logs(args.collect, args.runs)
        print(f"collected {len(copied)} log files from {args.collect} into {args.runs}")
    for path in rebuild_tables(args.runs, args.results):
        print(path)


def _describe(args: argparse.Namespace) -> None:
    from pretrain.models.describe import describe

    print(describe(args.model, args.overrides, args.sentence, all_presets=args.all, markdown=args.markdown))


def _compare(args: argparse.Namespace) -> None:
    from pretrain.comparison.run import compare

    for path in compare(args.models, args.presets, args.repeats, args.warmup, args.threads, args.runs, args.run,
                        args.out, not args.no_int8):
        print(path)


def _export(args: argparse.Namespace) -> None:
    from pretrain.models.hf import export_checkpoint

    print(export_checkpoint(args.checkpoint, args.out, args.tokenizer, args.drop_sentence_head))


def _finetune(args: argparse.Namespace) -> None:
    from pretrain.downstream.runner import finetune

    finetune(args.pretrained, args.task, args.seeds, args.preset, args.recipe, args.overrides, args.runs,
             args.random_init, args.tokenizer, args.out)


def _probe(args: argparse.Namespace) -> None:
    from pretrain.downstream.probe import run_blimp, run_sentence

    if args.probe == "blimp":
        if len(args.models) != 1:
            raise UserError("probe blimp takes one model")
        run_blimp(args.models[0], args.limit, args.phenomena, args.blimp, args.out, args.runs, args.random_init,
                  args.tokenizer)
    else:
        run_sentence(args.models, args.corpus, args.validation_fraction, args.pairs, args.max_length, args.runs)


def _submit(args: argparse.Namespace) -> None:
    from pretrain.cluster.submit import submit

    flags = {k: getattr(args, k) for k in ("nodes", "gpus_per_node", "procs_per_node", "cpus_per_task", "partition",
                                           "time", "account", "qos", "launcher", "signal_seconds")}
    submit(args.target, args.preset, args.overrides, flags, args.site, args.runs, args.results, args.dry_run)


def _status(args: argparse.Namespace) -> None:
    from pretrain.cluster.slurm_status import print_status

    print_status(args.target, args.runs)


def _command(sub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """One subcommand parser whose description keeps its line breaks."""
    return sub.add_parser(name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_train(sub) -> None:
    """The ``pretrain train`` subcommand and its options."""
    t = _command(sub, "train", "pretrain one run from a run config",
                "Pretrain one run: compose the config (defaults < CONFIG and its includes < --preset <\n"
                "key=value), build or find the data shards, train with DeepSpeed to train.max_steps.\n"
                "Writes runs/<name>/ (or run_dir=): config.yaml, metrics.jsonl, tb/, checkpoints/, summary.json;\n"
                "the last lines name them. Under torchrun/deepspeed every rank runs this same command.")
    t.add_argument("config", help="run config YAML, e.g. configs/recipe/roberta.yaml")
    t.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, applied last, e.g. train.max_steps=100 data.corpus=PATH")
    t.add_argument("--preset", help="scale preset: configs/preset/NAME.yaml (smoke, small) or a YAML path")
    t.add_argument("--resume", action="store_true",
                   help="continue the run from its latest checkpoint (fresh start if it has none)")
    t.set_defaults(fn=_train)


def _add_ablate(sub) -> None:
    """The ``pretrain ablate`` subcommand and its options."""
    a = _command(sub, "ablate", "run every arm of an ablation and write its table",
                "Compose and check every arm of an ablation first (nothing runs if one fails), build each\n"
                "distinct data config once, train the arms one after another (finished arms are skipped,\n"
                "interrupted ones resumed), fine-tune each on the tasks of the ablation's evaluate: section\n"
                "(plus one random-init control), and write the table after each stage to\n"
                "RESULTS/<preset>/<ablation>.{md,csv,png}; runs go to RUNS/<ablation>/<arm>/.")
    a.add_argument("ablation", help="ablation YAML, e.g. configs/ablation/roberta_masking.yaml")
    a.add_argument("overrides", nargs="*", metavar="key=value",
                   help="overrides of every arm's run config, e.g. data.corpus=PATH; keys starting evaluate. "
                        "change the ablation's evaluate: section instead, e.g. evaluate.probes.blimp=true")
    a.add_argument("--preset", required=True, help="scale preset every arm runs at (smoke, small, or a YAML path)")
    a.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                   help="pretrain only: skip the evaluate: section's fine-tuning stages (their table columns stay empty)")
    a.add_argument("--runs", default="runs", metavar="DIR", help="root of the run directories (default: runs)")
    a.add_argument("--results", default="results", metavar="DIR",
                   help="root of the tables; each preset writes into its own DIR/<preset>/ (default: results)")
    a.add_argument("--time-budget", metavar="DURATION",
                   help="stop after DURATION (e.g. 2h, 90m, 1h30m): the run in progress checkpoints at its next step "
                        "as on SIGTERM, no new stage starts, the table is written, exit code 75; rerun the same "
                        "command to continue (docs/ablations.md: running the suite in chunks)")
    a.set_defaults(fn=_ablate)


def _add_tables(sub) -> None:
    """The ``pretrain tables`` subcommand and its options."""
    tb = _command(sub, "tables", "rebuild every result table from run directories, without training",
                 "For every RUNS/*/ablation.yaml, rewrite RESULTS/<preset>/<ablation>.{md,csv,png} from the\n"
                 "run directories alone (summary.json, metrics.jsonl, each fine-tuning job's scores.json);\n"
                 "unfinished arms are marked. Prints the paths it wrote.")
    tb.add_argument("--runs", default="runs", metavar="DIR",
                    help="root holding <ablation>/ablation.yaml and the arms' run directories (default: runs)")
    tb.add_argument("--results", default="results", metavar="DIR",
                    help="root of the tables, one subdirectory per preset (default: results)")
    tb.add_argument("--collect", metavar="SRC",
                    help="first copy each SRC/<ablation>'s log subset (ablation.yaml; per run config.yaml, metrics.jsonl, "
                         "summary.json; per fine-tuning job finetune.yaml, scores.json, scores.md) into --runs, "
                         "replacing --runs/<ablation>; e.g. --collect runs --runs results/runs")
    tb.set_defaults(fn=_tables)


def _add_describe(sub) -> None:
    """The ``pretrain describe`` subcommand and its options."""
    d = _command(sub, "describe", "layers, sizes and parameter counts of a model preset or YAML",
                "Print a model's shape and a per-part parameter count (built on the meta device: no\n"
                "memory, no download), or with --all --markdown the README's preset table.")
    d.add_argument("model", nargs="?", help="preset name (configs/model/NAME.yaml) or a model YAML path")
    d.add_argument("overrides", nargs="*", metavar="key=value", help="model overrides, e.g. sharing=attention")
    d.add_argument("--sentence", choices=["none", "nsp", "sop"],
                   help="sentence head to count (default: the one of the family's paper)")
    d.add_argument("--all", action="store_true", help="every preset in configs/model instead of MODEL")
    d.add_argument("--markdown", action="store_true", help="print a markdown table")
    d.set_defaults(fn=_describe)


def _add_compare(sub) -> None:
    """The ``pretrain compare`` subcommand and its options."""
    from pretrain.comparison.report import DEFAULT_OUT
    from pretrain.comparison.shapes import BASE, MODELS

    c = _command(sub, "compare", "size / speed / quality table of BERT, RoBERTa, ALBERT, DistilBERT and ELECTRA",
                "For each model at each shape group (a --preset's shapes, or 'base': the published base shapes),\n"
                "count parameters, write the float32 weights as safetensors (in a temporary directory) and time\n"
                "CPU inference at sequence length 128 (ms per sequence at batch 1, sequences/s at batch 32; GPU\n"
                "too when available), plus dynamic int8 rows for BERT and DistilBERT. Scores come from finished\n"
                "`pretrain finetune` jobs of the runs under --runs (or --run MODEL=DIR); none given: 'not run'.\n"
                "Writes PATH.md and PATH.csv (--out; default results/model_comparison) and prints their paths.")
    c.add_argument("--presets", nargs="+", default=["small", BASE], metavar="NAME",
                   help=f"shape groups: preset names (configs/preset) and/or '{BASE}' (default: small base)")
    c.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, metavar="MODEL",
                   help=f"models to measure (default: all of {', '.join(MODELS)})")
    c.add_argument("--repeats", type=int, default=5, help="timed runs per measurement; the median is reported (default 5)")
    c.add_argument("--warmup", type=int, default=2, help="untimed forward calls before timing (default 2)")
    c.add_argument("--threads", type=int, help="torch.set_num_threads (default: leave torch's setting)")
    c.add_argument("--runs", metavar="DIR", help="root of the pretraining runs (RUNS/<recipe name>) whose fine-tuning "
                   "jobs give the score columns")
    c.add_argument("--run", action="append", default=[], metavar="MODEL=DIR",
                   help="a model's pretraining run directory (repeatable), e.g. --run bert=runs/small/bert")
    c.add_argument("--out", default=str(DEFAULT_OUT), metavar="PATH",
                   help=f"output path without suffix: PATH.md and PATH.csv (default {DEFAULT_OUT})")
    c.add_argument("--no-int8", action="store_true", help="leave out the dynamic int8 rows")
    c.set_defaults(fn=_compare)


def _add_export(sub) -> None:
    """The ``pretrain export`` subcommand and its options."""
    x = _command(sub, "export", "write a checkpoint as a Hugging Face model directory",
                "Convert a checkpoint to a transformers model directory (config.json, weights,\n"
                "tokenizer files) that AutoModelForMaskedLM loads; prints the directory. An ELECTRA run\n"
                "(task=electra) gives OUT/discriminator (ElectraForPreTraining) and\n"
                "OUT/generator (ElectraForMaskedLM).")
    x.add_argument("checkpoint", help="run directory, its checkpoints/ or one checkpoints/step-* directory")
    x.add_argument("out", help="output directory: new, empty, or an earlier export (replaced); not inside the run")
    x.add_argument("--format", choices=["hf"], required=True, help="hf: a Hugging Face transformers model directory")
    x.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json to ship (default: the one of the run's shards)")
    x.add_argument("--drop-sentence-head", action="store_true",
                   help="leave out the NSP/SOP head (RoBERTa's class has none)")
    x.set_defaults(fn=_export)


def _add_finetune(sub) -> None:
    """The ``pretrain finetune`` subcommand and its options."""
    f = _command(sub, "finetune", "fine-tune a checkpoint or Hugging Face model on a GLUE task or CoNLL-2003, over seeds",
                "Fine-tune every learning rate x seed of the recipe (configs/finetune/<family>.yaml, or --recipe)\n"
                "as runs of the training loop; report the median over seeds at the lr with the best median,\n"
                "from each run's last step (no early stopping). Writes <run>/finetune/<task>/ (or --out):\n"
                "finetune.yaml, lr-*/seed-*/ runs, scores.json, scores.md; the last line is the score.\n"
                "See docs/evaluation.md.")
    f.add_argument("pretrained", help="run directory, checkpoints/ or step-* directory, or a Hugging Face model directory")
    f.add_argument("overrides", nargs="*", metavar="key=value",
                   help="overrides of the fine-tuning config, e.g. lrs=[1e-4] data.max_train_rows=1000")
    f.add_argument("--task", required=True, help="sst2 cola mrpc qqp stsb qnli rte mnli conll2003")
    f.add_argument("--seeds", type=int, help="seeds 1..N per learning rate (default: the recipe's)")
    f.add_argument("--preset", help="configs/finetune/preset/NAME.yaml: smoke, small (or a YAML path)")
    f.add_argument("--recipe", help="configs/finetune/NAME.yaml: bert, roberta, albert, distilbert, electra (default: the model's family; bert for ELECTRA)")
    f.add_argument("--random-init", action="store_true", help="control: same shape and tokenizer, random weights")
    f.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json to use instead of the model's")
    f.add_argument("--runs", default="runs", help="root for jobs of Hugging Face models (default runs)")
    f.add_argument("--out", help="job directory (default: <run>/finetune/<task> or RUNS/finetune/<name>/<task>)")
    f.set_defaults(fn=_finetune)


def _add_probe(sub) -> None:
    """The ``pretrain probe`` subcommand and its options."""
    pr = _command(sub, "probe", "zero-shot probes: BLiMP by pseudo-log-likelihood, held-out NSP/SOP/MLM accuracy",
                 "blimp: score one model on BLiMP's minimal pairs by pseudo-log-likelihood; writes blimp.json\n"
                 "(<run>/eval/ or RUNS/probe/<name>/). sentence: score models on one shared held-out NSP set\n"
                 "and SOP set (and masked tokens) from the pretraining corpus's validation documents; prints\n"
                 "the cross table, writes sentence.json per model. See docs/evaluation.md.")
    pr.add_argument("probe", choices=["blimp", "sentence"], help="blimp (minimal pairs) or sentence (NSP/SOP/MLM)")
    pr.add_argument("models", nargs="+", help="run/checkpoint directories or Hugging Face model directories")
    pr.add_argument("--limit", type=int, help="blimp: first N pairs of each phenomenon")
    pr.add_argument("--phenomena", nargs="+", help="blimp: only these phenomena (file names without .jsonl)")
    pr.add_argument("--blimp", help="blimp: data directory (default $BERT_RECIPES_DATA/blimp)")
    pr.add_argument("--random-init", action="store_true", help="blimp: control with random weights")
    pr.add_argument("--tokenizer", metavar="PATH", help="blimp: tokenizer.json to use instead of the model's")
    pr.add_argument("--corpus", help="sentence: corpus spec of the held-out documents (default: the checkpoint's)")
    pr.add_argument("--validation-fraction", type=float, help="sentence: the pretraining data's validation_fraction")
    pr.add_argument("--pairs", type=int, default=2000, help="sentence: pairs per task (default 2000)")
    pr.add_argument("--max-length", type=int, default=128, help="sentence: tokens per pair (default 128)")
    pr.add_argument("--runs", default="runs", help="root of probe outputs for Hugging Face models (default runs)")
    pr.add_argument("--out", help="blimp: output directory")
    pr.set_defaults(fn=_probe)


def _add_submit(sub) -> None:
    """The ``pretrain submit`` subcommand and its options."""
    s = _command(sub, "submit", "run a run config or an ablation as Slurm jobs (see slurm/README.md)",
                "Check everything first, then write and submit up to three Slurm jobs: data (data-prep\n"
                "build), training (a job array for an ablation; requeued on preemption) and, for an\n"
                "ablation, tables. Scripts and logs go to <run_dir>/slurm/ or RUNS/<ablation>/slurm/.\n"
                "Job options default to the site file's `job:` section (slurm/site.yaml or --site).")
    s.add_argument("target", help="run config or ablation YAML")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the run config (every arm's); for an ablation, keys starting evaluate. change its evaluate: section")
    s.add_argument("--preset", help="scale preset (required for an ablation)")
    s.add_argument("--nodes", type=int, help="nodes per run; srun starts one launcher per node (default 1)")
    s.add_argument("--gpus-per-node", type=int, help="GPUs per node, one training process each (default 0: a CPU job)")
    s.add_argument("--procs-per-node", type=int, help="training processes per node of a CPU job (default 1)")
    s.add_argument("--cpus-per-task", type=int, help="CPUs of each node's task, shared by its processes (default: the cluster's)")
    s.add_argument("--partition", help="Slurm partition (default: the cluster's)")
    s.add_argument("--time", help="time limit: minutes, HH:MM:SS or D-HH:MM:SS, e.g. 2-00:00:00")
    s.add_argument("--account", help="Slurm account to charge")
    s.add_argument("--qos", help="Slurm quality of service")
    s.add_argument("--launcher", choices=["torchrun", "deepspeed"], help="per-node launcher (default torchrun)")
    s.add_argument("--signal-seconds", type=int,
                   help="USR1 this many seconds before the time limit: checkpoint and requeue (default 300)")
    s.add_argument("--site", metavar="FILE", help="site file: modules, environment, extra #SBATCH lines (default slurm/site.yaml if present)")
    s.add_argument("--runs", default="runs", metavar="DIR", help="root of the run directories of an ablation (default: runs)")
    s.add_argument("--results", default="results", metavar="DIR", help="where the tables job writes (default: results)")
    s.add_argument("--dry-run", action="store_true", help="print the job scripts and sbatch commands; write and submit nothing")
    s.set_defaults(fn=_submit)


def _add_status(sub) -> None:
    """The ``pretrain status`` subcommand and its options."""
    st = _command(sub, "status", "pending/running/requeued/done/failed per run of a submission",
                 "One line per run of a `pretrain submit`: its state (from squeue/scontrol, then Slurm's\n"
                 "accounting, then the run directory), job id and detail.")
    st.add_argument("target", help="ablation directory (runs/NAME), run directory or ablation YAML")
    st.add_argument("--runs", default="runs", metavar="DIR", help="root of the run directories, for an ablation YAML (default: runs)")
    st.set_defaults(fn=_status)


def build_parser() -> argparse.ArgumentParser:
    """The ``pretrain`` argument parser: every subcommand and option with its help text."""
    p = argparse.ArgumentParser(prog="pretrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The `deepspeed` launcher adds --local_rank=N; the trainer reads LOCAL_RANK from the env instead.
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_ablate, _add_tables, _add_describe, _add_compare, _add_export, _add_finetune, _add_probe, _add_submit, _add_status):
        add(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    p = build_parser()
    args, extra = p.parse_known_args(argv)
    # argparse stops filling a nargs="*" positional at the first option, so key=value pairs
    # typed after --preset arrive here: keep them as overrides (in order); anything else is
    # still an unrecognized argument.
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            p.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return run_cli(args.fn, args)


if __name__ == "__main__":
    sys.exit(main())
