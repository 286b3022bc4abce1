"""The model shapes the comparison measures, composed by the project's config loading.

Each family is its recipe in ``configs/recipe/``; a shape group is either a scale preset
(``small``, ``smoke``, ...: the model section exactly as ``pretrain train
configs/recipe/X.yaml --preset NAME`` composes it, vocabulary from the preset's tokenizer)
or ``base``: the recipes at paper scale, whose model sections are the published base
shapes with the published vocabularies (BERT-base 30522 WordPiece, RoBERTa-base 50265 BPE,
ALBERT-base 30000 SentencePiece; ELECTRA-Base from ``electra-base.yaml``, Clark et al.
2020 Table 6).

DistilBERT's model section is written from its teacher when its config loads
(``pretrain.models.distil.resolve_distillation``), which reads the teacher's run. Its
recipe's default teacher, ``runs/bert``, is what ``pretrain train configs/recipe/bert.yaml``
trains at the same preset, so the student here is ``student_model_config`` of that BERT
shape with the layers ``select_layers`` picks from the recipe's ``distillation`` keys —
the same functions, without needing a trained teacher on disk. At ``base`` that is
DistilBERT-base (Sanh et al. 2019 §3: 6 layers of BERT-base, no token-type embedding, no
pooler).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

from common.errors import UserError

BASE = "base"
MODELS = ("bert", "roberta", "albert", "distilbert", "electra")
LABELS = {"bert": "BERT", "roberta": "RoBERTa", "albert": "ALBERT", "distilbert": "DistilBERT",
          "electra": "ELECTRA (discriminator)"}
# The recipe each family trains with; ELECTRA's base shape has its own recipe file.
RECIPE = {"bert": "bert.yaml", "roberta": "roberta.yaml", "albert": "albert.yaml", "distilbert": "distilbert.yaml",
          "electra": "electra.yaml"}
BASE_RECIPE = {**RECIPE, "electra": "electra-base.yaml"}
TEACHER = "bert"  # DistilBERT's default teacher runs/bert is the BERT recipe's run


@dataclass
class Shape:
    """One model to measure.

    model: a key of ``MODELS``; group: a preset name or ``BASE``; label: its name in the
    table; cfg: its ``pretrain.config.ModelConfig`` (vocab_size set); run_name: the run
    name its recipe trains under (``runs/<run_name>``), where its fine-tuning jobs are
    looked for; recipe: the recipe file; command: the ``pretrain train`` command whose model
    section ``cfg`` is; generator: ELECTRA's generator ModelConfig (``generator_config``),
    else None; electra: the run's ``ElectraConfig`` (ELECTRA only).
    """

    model: str
    group: str
    label: str
    cfg: Any
    run_name: str
    recipe: Path
    command: str
    generator: Any = None
    electra: Any = None


def recipes_dir(configs_root: Optional[Path] = None) -> Path:
    """``configs/recipe`` of ``configs_root`` (default: ./configs if present, else the
    repository's)."""
    if configs_root is None:
        local = Path("configs")
        configs_root = local if (local / "recipe").is_dir() else Path(__file__).resolve().parents[2] / "configs"
    return Path(configs_root) / "recipe"


def resolved_model(run: Any, where: Path):
    """``run.model`` as a ModelConfig of plain values, resolved inside its run config: read
    alone, a preset's ``${oc.select:data.tokenizer.vocab_size,N}`` would fall back to the
    published N (a trained run's saved config is resolved already)."""
    from omegaconf import OmegaConf

    from common.configfile import merge_into
    from pretrain.config import ModelConfig

    return merge_into(ModelConfig, OmegaConf.to_container(run.model, resolve=True), where=str(where))


def _distilbert_config(path: Path, teacher_path: Path, preset: Optional[str]):
    """(student ModelConfig, run name): the student ``resolve_distillation`` writes from a
    teacher of ``teacher_path``'s shape at ``preset`` (module docstring)."""
    from common.configfile import merge_into
    from pretrain.config import RunConfig, load_run_config, read_composed, read_preset
    from pretrain.models.distil import check_distillation_config, select_layers, student_model_config

    teacher_model = resolved_model(load_run_config(teacher_path, preset), teacher_path)
    parts = [read_composed(path)] + ([read_preset(preset, path)[0]] if preset else [])
    raw = merge_into(RunConfig, *parts, where=str(path))
    d = raw.distillation
    if d is None:
        raise UserError(f"{path}: no distillation section; the DistilBERT recipe needs one")
    check_distillation_config(d)
    layers = select_layers(teacher_model.num_hidden_layers, d.layer_selection, list(d.student_layers))
    return student_model_config(teacher_model, layers), raw.name


def compose(model: str, group: str, configs_root: Optional[Path] = None) -> Shape:
    """The ``Shape`` of ``model`` in ``group`` (a preset name or ``BASE``).

    Raises:
        UserError: an unknown model or preset, or a recipe that does not load.
    """
    from pretrain.config import load_run_config

    if model not in MODELS:
        raise UserError(f"unknown model {model!r}; choose from: {', '.join(MODELS)}")
    preset = None if group == BASE else group
    rdir = recipes_dir(configs_root)
    path = rdir / (BASE_RECIPE if preset is None else RECIPE)[model]
    if not path.is_file():
        raise UserError(f"recipe not found: {path}")
    command = f"pretrain train configs/recipe/{path.name}" + (f" --preset {preset}" if preset else "")
    if model == "distilbert":
        cfg, name = _distilbert_config(path, rdir / RECIPE[TEACHER], preset)
        return Shape(model, group, LABELS[model], cfg, name, path, command)
    run = load_run_config(path, preset)
    cfg = resolved_model(run, path)
    if model == "electra":
        from pretrain.models.electra import generator_config

        return Shape(model, group, LABELS[model], cfg, run.name, path, command,
                     generator=generator_config(cfg, run.electra), electra=run.electra)
    return Shape(model, group, LABELS[model], cfg, run.name, path, command)


def compose_all(models: Sequence[str], groups: Sequence[str], configs_root: Optional[Path] = None) -> List[Shape]:
    """Every ``compose(model, group)``, group by group, models in the given order; every
    config is loaded before anything is measured."""
    return [compose(m, g, configs_root) for g in groups for m in models]
