"""The evaluation stages of ``pretrain ablate`` (issue 14): after each run's pretraining, one
``pretrain finetune`` job per task of the ablation's ``evaluate`` section (then its probes:
``pretrain probe blimp|sentence``, ``ProbeStage``), and one random-init control job per task
(and BLiMP) for the whole ablation (on the first arm's first run).

A stage is the same job as the command line's, in its default job directory:

    pretrain finetune <run> --task T --preset P [evaluate.overrides ...] [--random-init]
    → <run>/finetune/T/  (or T-random-init/)

so a job run by hand with the same settings counts as done. Its state:

- ``done``: ``scores.json`` is there and ``finetune.yaml`` equals the config the stage would
  run: skipped;
- ``partial``: the same ``finetune.yaml`` without ``scores.json``: ``finetune()`` resumes it
  (finished seeds are kept, an interrupted one resumes from its checkpoint);
- ``new``: no job directory yet.

A ``finetune.yaml`` that differs from the stage's config (other preset, lrs, precision ...),
or a ``scores.json`` without one, is refused in one line naming the file: the stage neither
redoes nor mixes jobs made another way. Every stage is composed and checked (task, preset,
overrides, training rows, the loop's config checks, existing job directories) by
``plan_evaluation`` before the first arm trains.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import OmegaConf

from common.configfile import read_yaml
from common.errors import UserError
from pretrain.downstream.runner import FINETUNE_YAML
from pretrain.training import rundir

# Without a fine-tuning preset named like the ablation's preset (``medium`` has none: its
# models are BERT-Small-sized, which Turc et al. 2019 fine-tune like the ``small`` preset's),
# the stages use this one.
FALLBACK_PRESET = "small"


@dataclass
class FinetuneStage:
    """One fine-tuning job of an ablation.

    key: the pretraining run's path under ``runs/<ablation>`` (``arm`` or ``arm/seed-S``).
    run_dir: the pretraining run directory the job fine-tunes from.
    job: ``<run_dir>/finetune/<task>`` (``-random-init`` for the control).
    cfg: the composed FinetuneConfig, as ``finetune()`` will write it to ``finetune.yaml``.
    runs: every lr × seed loop run of the job: (run directory, ``train.max_steps``).
    tokens_per_step: global batch × ``data.max_length`` (token slots of one step, for the ETA).
    """

    key: str
    task: str
    random_init: bool
    run_dir: Path
    job: Path
    cfg: Any
    runs: List[Tuple[Path, int]]
    tokens_per_step: int

    @property
    def name(self) -> str:
        return f"finetune {self.task}" + (" (random-init control)" if self.random_init else "")


@dataclass
class ProbeStage:
    """One zero-shot probe of a run (``evaluate.probes``): ``pretrain probe blimp|sentence``,
    writing ``<run_dir>/eval/<probe>.json`` (``eval-random-init/`` for the BLiMP control; the
    rule of ``pretrain.downstream.probe.eval_directory`` for our runs). No loop runs, so it
    adds nothing to the progress bar's token count.

    limit: BLiMP pairs per phenomenon (None = all); pairs: NSP/SOP pairs per task;
    runs_root: where the shared NSP/SOP sets are cached (``<runs_root>/probe/sentence-sets``).
    """

    key: str
    probe: str
    random_init: bool
    run_dir: Path
    job: Path
    limit: Optional[int] = None
    pairs: int = 2000
    runs_root: str = "runs"
    runs: tuple = ()
    tokens_per_step: int = 0

    @property
    def name(self) -> str:
        return f"probe {self.probe}" + (" (random-init control)" if self.random_init else "")

    @property
    def out(self) -> Path:
        return self.job / f"{self.probe}.json"


def finetune_preset(preset: Optional[str], ablation_preset: str) -> str:
    """``evaluate.preset`` if given; else the fine-tuning preset named like the ablation's
    ``--preset`` (its file stem for a YAML path) when ``configs/finetune/preset/`` has one
    (smoke, small), else FALLBACK_PRESET (medium → small)."""
    from pretrain.downstream.config import _finetune_root

    if preset:
        return str(preset)
    p = Path(ablation_preset)
    name = p.stem if p.suffix in (".yaml", ".yml") else ablation_preset
    return name if (_finetune_root() / "preset" / f"{name}.yaml").is_file() else FALLBACK_PRESET


def plan_evaluation(abl: Any, preset: str, cfgs: Dict[str, Any], runs_root: str | Path = "runs") -> List[Any]:
    """Every evaluation stage of the ablation, in run order (each run's tasks, then its probes;
    the control's after the first run's): FinetuneStage and ProbeStage. Each fine-tuning
    stage is composed and checked now: the fine-tuning recipe of the
    run's model family < the preset (``finetune_preset``) < ``evaluate.overrides``; the
    task's training rows are counted (the data must be there), every lr × seed run passes the
    loop's config checks, ``data.max_length`` fits the model's positions, and an existing job
    directory must hold the same config (``check_job``); for the probes, the BLiMP data must be
    there and an existing ``blimp.json`` must have the same limit. Returns [] when the section
    asks for nothing. Raises UserError naming the run and task."""
    from pretrain.downstream.config import resolve
    from pretrain.downstream.runner import job_directory, run_configs
    from pretrain.downstream.task_data import count_train_rows
    from pretrain.tasks.finetuning import FinetuningTask
    from pretrain.training.checks import check_run

    from pretrain.ablations.spec import evaluating

    ev = abl.evaluate
    if not evaluating(ev):
        return []
    fpreset = finetune_preset(ev.preset, preset)
    resolve("preset", fpreset)
    if ev.probes.blimp:
        from pretrain.downstream.glue import default_root

        if not (default_root() / "blimp").is_dir():
            raise UserError(f"ablation {abl.name}, evaluate.probes.blimp: no BLiMP data at {default_root() / 'blimp'} "
                            "(set $BERT_RECIPES_DATA); `pretrain ablate --no-evaluate` pretrains without it")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rows: Dict[tuple, int] = {}
    out: List[FinetuneStage] = []
    first = next(iter(cfgs))
    for key, rc in cfgs.items():
        for random_init in (False, True) if key == first and ev.control else (False,):
            for task in ev.tasks:
                where = f"ablation {abl.name}, evaluate {task} of {key}" + (" (control)" if random_init else "")
                try:
                    cfg = compose(rc, task, random_init, fpreset, ev.overrides)
                    room = rc.model.max_position_embeddings - rc.model.position_offset
                    if cfg.data.max_length > room:
                        raise UserError(f"data.max_length={cfg.data.max_length} exceeds the model's {room} positions")
                    src = (task, cfg.data.source, cfg.data.max_train_rows)
                    if src not in rows:
                        rows[src] = count_train_rows(*src)
                    job = job_directory({"run_dir": Path(rc.run_dir)}, task, random_init, "runs")
                    runs = run_configs(cfg, job, rows[src])
                    for r in runs:
                        check_run(r, world, FinetuningTask)
                except UserError as e:
                    raise UserError(f"{where}: {e} (`pretrain ablate --no-evaluate` pretrains without it)") from None
                stage = FinetuneStage(key, task, random_init, Path(rc.run_dir), job, cfg,
                                      [(Path(r.run_dir), int(r.train.max_steps)) for r in runs],
                                      int(cfg.train.global_batch_size) * int(cfg.data.max_length))
                check_job(stage)
                out.append(stage)
            out += _probes(key, Path(rc.run_dir), ev.probes, random_init, str(runs_root))
        _check_checkpoint(abl.name, Path(rc.run_dir), [s for s in out if s.key == key and not s.random_init])
    return out


def _check_checkpoint(ablation: str, run: Path, stages: Sequence[Any]) -> None:
    """A run that finished pretraining but kept only its logs (e.g. restored from
    ``results/runs`` on a new machine, whose ``runs/`` was lost) cannot be fine-tuned or
    probed: say so before any arm trains, not after hours of other arms. ``stages``: the
    run's own FinetuneStages and ProbeStages (not the control's). Raises UserError naming the
    first stage still to run and the run."""
    if not stages or rundir.has_checkpoint(run) or rundir.finished_summary(run) is None:
        return
    pending = next((s for s in stages if stage_state(s) != "done"), None)
    if pending is not None:
        what = f"evaluate.probes.{pending.probe}" if isinstance(pending, ProbeStage) else f"evaluate {pending.task}"
        raise UserError(f"ablation {ablation}, {what} of {pending.key}: {run} finished pretraining but has no checkpoint "
                        f"in {run / rundir.CHECKPOINTS} (only its logs, e.g. restored from results/runs); move {run} "
                        "away to retrain it, or drop this stage from evaluate (`--no-evaluate` pretrains only)")


def _probes(key: str, run: Path, probes: Any, random_init: bool, runs_root: str) -> List[ProbeStage]:
    """The probe stages of one run (the control: BLiMP only; the sentence probe has no
    random-init mode). UserError for an existing blimp.json of another limit."""
    out = []
    if probes.blimp:
        out.append(ProbeStage(key, "blimp", random_init, run, run / ("eval-random-init" if random_init else "eval"),
                              limit=probes.blimp_limit, runs_root=runs_root))
    if probes.sentence and not random_init:
        out.append(ProbeStage(key, "sentence", False, run, run / "eval", pairs=int(probes.sentence_pairs), runs_root=runs_root))
    for st in out:
        probe_state(st)
    return out


def probe_state(stage: ProbeStage) -> str:
    """``done`` when the probe's JSON is there (for BLiMP: with the same ``limit``), else
    ``new`` (a probe is one short pass, rerun from the start; so is a JSON that does not
    parse, which the rerun rewrites whole). UserError naming the file when its BLiMP limit
    differs."""
    import json

    if not stage.out.is_file():
        return "new"
    try:
        table = json.loads(stage.out.read_text(encoding="utf-8"))
    except ValueError:
        return "new"
    if not isinstance(table, dict):
        return "new"
    if stage.probe == "blimp":
        have = table.get("limit")
        if have != stage.limit:
            raise UserError(f"{stage.out}: BLiMP scored with limit {have}, this ablation's evaluate.probes.blimp_limit is "
                            f"{stage.limit}; move the file away or make blimp_limit match it")
    return "done"


def compose(rc: Any, task: str, random_init: bool, preset: str, overrides: Sequence[str]) -> Any:
    """The FinetuneConfig ``finetune(rc.run_dir, task, preset=preset, overrides=overrides,
    random_init=random_init)`` composes (``pretrain.downstream.runner.finetune``): the recipe
    of the run's ``model.family``, ``pretrained`` = the run directory as given."""
    from pretrain.downstream.config import load_finetune_config

    base = {"pretrained": str(rc.run_dir), "task": task, "random_init": bool(random_init)}
    return load_finetune_config(str(rc.model.family), preset, list(overrides), base)


def check_job(stage: FinetuneStage) -> None:
    """Refuse a job directory made with another config: its ``finetune.yaml`` must equal the
    stage's config (``pretrained`` compared as resolved paths; a key the file lacks, added to
    the config since, is taken at its default), and a ``scores.json`` needs one beside it.
    Raises UserError naming the file and the differing keys."""
    from pretrain.downstream.runner import SCORES_JSON

    f = stage.job / FINETUNE_YAML
    if not f.is_file():
        if (stage.job / SCORES_JSON).is_file():
            raise UserError(f"{stage.job / SCORES_JSON} has no {FINETUNE_YAML} beside it, so how it was made is unknown; "
                            f"move {stage.job} away and rerun")
        return
    have = _flat(OmegaConf.to_container(read_yaml(f), resolve=True))
    want = _flat(OmegaConf.to_container(stage.cfg, resolve=True))
    diff = []
    for k, v in sorted(have.items()):
        w = want.get(k, "<not a key>")
        if k == "pretrained" and v is not None and w is not None:
            same = os.path.realpath(str(v)) == os.path.realpath(str(w))
        else:
            same = v == w
        if not same:
            diff.append(f"{k}: {v!r} there, {w!r} here")
    if diff:
        raise UserError(f"{f}: fine-tuning job made with another config than this ablation's evaluate stage "
                        f"({'; '.join(diff[:4])}{' ...' if len(diff) > 4 else ''}); move {stage.job} away, "
                        "or make evaluate (preset, overrides) match it")


def stage_state(stage: Any) -> str:
    """``done``, ``partial`` or ``new`` (module docstring; ``probe_state`` for a probe).
    Raises UserError via ``check_job``."""
    from pretrain.downstream.runner import SCORES_JSON

    if isinstance(stage, ProbeStage):
        return probe_state(stage)
    check_job(stage)
    if (stage.job / SCORES_JSON).is_file():
        return "done"
    return "partial" if (stage.job / FINETUNE_YAML).is_file() else "new"


def run_stage(stage: Any, preset: str, overrides: Sequence[str]) -> None:
    """Run (or resume) the job as ``pretrain finetune`` (or ``pretrain probe``) would, into
    its default directory."""
    if isinstance(stage, ProbeStage):
        from pretrain.downstream import probe

        if stage.probe == "blimp":
            probe.run_blimp(str(stage.run_dir), limit=stage.limit, runs_root=stage.runs_root, random_init=stage.random_init)
        else:
            probe.run_sentence([str(stage.run_dir)], pairs=stage.pairs, runs_root=stage.runs_root)
        return
    from pretrain.downstream.runner import finetune

    finetune(str(stage.run_dir), stage.task, preset=preset, overrides=list(overrides), random_init=stage.random_init)


def _flat(d: Any, prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
