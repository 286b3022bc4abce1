"""``pretrain``: train a run, run an ablation, rebuild result tables.

    pretrain train CONFIG [--preset NAME] [--resume] [key=value ...]
    pretrain ablate ABLATION --preset NAME [key=value ...]
    pretrain tables [--runs DIR] [--results DIR]
    pretrain describe MODEL [key=value ...] [--sentence none|nsp|sop] [--markdown]
    pretrain describe --all [--markdown]
    pretrain export CKPT --format hf OUT [--tokenizer PATH] [--drop-sentence-head]
    pretrain finetune CKPT|HF_DIR --task NAME [--seeds N] [--preset smoke|small] [--random-init] [key=value ...]
    pretrain probe blimp CKPT|HF_DIR [--limit N] [--random-init]
    pretrain probe sentence CKPT|HF_DIR [...] [--corpus SPEC --validation-fraction F]
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from common.errors import UserError, run_cli


def _train(args: argparse.Namespace) -> None:
    from pretrain.config import load_run_config
    from pretrain.training.loop import train

    cfg = load_run_config(args.config, args.preset, args.overrides)
    train(cfg, resume=args.resume)


def _ablate(args: argparse.Namespace) -> None:
    from pretrain.ablations.runner import run_ablation

    run_ablation(args.ablation, args.preset, args.overrides, runs_root=args.runs, results_dir=args.results)


def _tables(args: argparse.Namespace) -> None:
    from pretrain.ablations.tables import rebuild_tables

    for path in rebuild_tables(args.runs, args.results):
        print(path)


def _describe(args: argparse.Namespace) -> None:
    from pretrain.models.describe import describe

    print(describe(args.model, args.overrides, args.sentence, all_presets=args.all, markdown=args.markdown))


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


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="pretrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The `deepspeed` launcher adds --local_rank=N; the trainer reads LOCAL_RANK from the env instead.
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="pretrain one run from a run config")
    t.add_argument("config", help="run config YAML (configs/recipe/*.yaml)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=100")
    t.add_argument("--preset", help="scale preset: configs/preset/NAME.yaml (smoke, small, ...)")
    t.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    t.set_defaults(fn=_train)

    a = sub.add_parser("ablate", help="run every arm of an ablation and write its table")
    a.add_argument("ablation", help="ablation YAML (configs/ablation/*.yaml)")
    a.add_argument("overrides", nargs="*", help="key=value overrides of every arm's run config")
    a.add_argument("--preset", required=True, help="scale preset (smoke, small, ...)")
    a.add_argument("--runs", default="runs", help="root of run directories")
    a.add_argument("--results", default="results", help="where tables and plots go")
    a.set_defaults(fn=_ablate)

    tb = sub.add_parser("tables", help="rebuild every result table from run directories, without training")
    tb.add_argument("--runs", default="runs")
    tb.add_argument("--results", default="results")
    tb.set_defaults(fn=_tables)

    d = sub.add_parser("describe", help="layers, sizes and parameter counts of a model preset or YAML")
    d.add_argument("model", nargs="?", help="preset name (configs/model/NAME.yaml) or a YAML path")
    d.add_argument("overrides", nargs="*", help="model key=value overrides, e.g. sharing=attention")
    d.add_argument("--sentence", choices=["none", "nsp", "sop"], help="sentence head to count (default: the family's paper)")
    d.add_argument("--all", action="store_true", help="every preset in configs/model")
    d.add_argument("--markdown", action="store_true", help="print a markdown table")
    d.set_defaults(fn=_describe)

    x = sub.add_parser("export", help="write a checkpoint as a Hugging Face model directory")
    x.add_argument("checkpoint", help="run directory, its checkpoints/ or one checkpoints/step-* directory")
    x.add_argument("out", help="output directory")
    x.add_argument("--format", choices=["hf"], required=True, help="hf: transformers model + tokenizer files")
    x.add_argument("--tokenizer", help="tokenizer.json to ship (default: the one of the run's shards)")
    x.add_argument("--drop-sentence-head", action="store_true", help="leave out the NSP/SOP head (RoBERTa has no class for it)")
    x.set_defaults(fn=_export)

    f = sub.add_parser("finetune", help="fine-tune a checkpoint or Hugging Face model on a GLUE task or CoNLL-2003, over seeds")
    f.add_argument("pretrained", help="run directory, checkpoints/ or step-* directory, or a Hugging Face model directory")
    f.add_argument("overrides", nargs="*", help="key=value overrides of the fine-tuning config, e.g. lrs=[1e-4]")
    f.add_argument("--task", required=True, help="sst2 cola mrpc qqp stsb qnli rte mnli conll2003 (checked by the config: TaskName)")
    f.add_argument("--seeds", type=int, help="seeds 1..N per learning rate (default: the recipe's)")
    f.add_argument("--preset", help="configs/finetune/preset/NAME.yaml: smoke, small (or a YAML path)")
    f.add_argument("--recipe", help="configs/finetune/NAME.yaml: bert, roberta, albert (default: the model's family)")
    f.add_argument("--random-init", action="store_true", help="control: same shape and tokenizer, random weights")
    f.add_argument("--tokenizer", help="tokenizer.json to use instead of the model's")
    f.add_argument("--runs", default="runs", help="root for jobs of Hugging Face models")
    f.add_argument("--out", help="job directory (default: <run>/finetune/<task> or runs/finetune/<name>/<task>)")
    f.set_defaults(fn=_finetune)

    pr = sub.add_parser("probe", help="zero-shot probes: BLiMP by pseudo-log-likelihood, held-out NSP/SOP/MLM accuracy")
    pr.add_argument("probe", choices=["blimp", "sentence"])
    pr.add_argument("models", nargs="+", help="run/checkpoint directories or Hugging Face model directories")
    pr.add_argument("--limit", type=int, help="blimp: first N pairs of each phenomenon")
    pr.add_argument("--phenomena", nargs="+", help="blimp: only these phenomena (file names without .jsonl)")
    pr.add_argument("--blimp", help="blimp: data directory (default $BERT_RECIPES_DATA/blimp)")
    pr.add_argument("--random-init", action="store_true", help="blimp: control with random weights")
    pr.add_argument("--tokenizer", help="blimp: tokenizer.json to use instead of the model's")
    pr.add_argument("--corpus", help="sentence: corpus spec of the held-out documents (default: the checkpoint's)")
    pr.add_argument("--validation-fraction", type=float, help="sentence: the pretraining data's validation_fraction")
    pr.add_argument("--pairs", type=int, default=2000, help="sentence: pairs per task (default 2000)")
    pr.add_argument("--max-length", type=int, default=128, help="sentence: tokens per pair (default 128)")
    pr.add_argument("--runs", default="runs", help="root of probe outputs for Hugging Face models")
    pr.add_argument("--out", help="blimp: output directory")
    pr.set_defaults(fn=_probe)

    s = sub.add_parser("submit", help="run a run config or an ablation as Slurm jobs (see slurm/README.md)")
    s.add_argument("target", help="run config or ablation YAML")
    s.add_argument("overrides", nargs="*", help="key=value overrides of the run config (every arm's)")
    s.add_argument("--preset", help="scale preset (required for an ablation)")
    s.add_argument("--nodes", type=int, help="nodes per run (default 1)")
    s.add_argument("--gpus-per-node", type=int, help="GPUs per node, one process each (default 0: CPU job)")
    s.add_argument("--procs-per-node", type=int, help="processes per node of a CPU job (default 1)")
    s.add_argument("--cpus-per-task", type=int, help="CPUs per node for its processes")
    s.add_argument("--partition")
    s.add_argument("--time", help="time limit, e.g. 2-00:00:00")
    s.add_argument("--account")
    s.add_argument("--qos")
    s.add_argument("--launcher", choices=["torchrun", "deepspeed"], help="per-node launcher (default torchrun)")
    s.add_argument("--signal-seconds", type=int, help="USR1 this long before the time limit (default 300)")
    s.add_argument("--site", help="site file (default slurm/site.yaml if present)")
    s.add_argument("--runs", default="runs", help="root of run directories (ablations)")
    s.add_argument("--results", default="results", help="where the tables job writes (ablations)")
    s.add_argument("--dry-run", action="store_true", help="print the job scripts instead of submitting")
    s.set_defaults(fn=_submit)

    st = sub.add_parser("status", help="pending/running/requeued/done/failed per run of a submission")
    st.add_argument("target", help="ablation directory (runs/NAME), run directory or ablation YAML")
    st.add_argument("--runs", default="runs", help="root of run directories (for an ablation YAML)")
    st.set_defaults(fn=_status)

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
