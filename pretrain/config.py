"""Typed run configuration: model, objective, data and training, composed from YAML files.

A run config file may start with an ``include`` mapping that pulls whole files into a
section (paths relative to the including file)::

    include:
      model: ../model/roberta-base.yaml
      data: ../data/roberta.yaml
      train: ../train/roberta.yaml

Layers merge in this order, later wins: dataclass defaults < included files < the file's
own keys < preset (``configs/preset/NAME.yaml``) < ablation arm < command-line
``key=value``. The result is a structured OmegaConf config, so a misspelt key fails at load
time with the valid names (``data_prep.config.merge_into``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, get_args

from omegaconf import DictConfig, OmegaConf

from common.configfile import merge_into, parse_overrides, read_yaml
from common.errors import UserError
from common.schema import SentenceObjective
from data_prep.config import DataConfig, check_data_config

# Typed choices (OmegaConf checks Literal fields): a value outside them fails when the
# config loads — YAML file, preset, ablation arm or key=value — naming the valid values.
Family = Literal["bert", "roberta", "albert", "distilbert"]
Sharing = Literal["none", "all", "attention", "ffn"]
Activation = Literal["gelu", "gelu_new", "relu"]
Precision = Literal["fp32", "bf16", "fp16"]
OptimizerName = Literal["adamw", "lamb"]
LambImpl = Literal["auto", "fused", "torch"]
ScheduleName = Literal["linear", "polynomial", "wsd"]
ZeroStage = Literal[0, 1, 2, 3]
# What a run trains (``pretrain.tasks.task_class``): masked LM (+ NSP/SOP) pretraining,
# DistilBERT's distillation (Sanh et al. 2019) or ELECTRA's replaced-token detection
# (Clark et al. 2020).
TaskName = Literal["pretraining", "distillation", "electra"]
LayerSelection = Literal["extract_distilbert", "every_other", "list"]
StudentInit = Literal["teacher", "random"]
# Where ELECTRA's discriminator loss is taken: every non-padding token (the paper), or only
# the masked ~15% ("ELECTRA 15%", Clark et al. 2020 §3.5, Table 5).
DiscPositions = Literal["all", "masked"]
FAMILIES = get_args(Family)
SHARING = get_args(Sharing)
ACTIVATIONS = get_args(Activation)
PRECISIONS = get_args(Precision)


@dataclass
class ModelConfig:
    """Encoder shape (read by ``pretrain.models.encoder``). Names follow Hugging Face's BertConfig.

    vocab_size: None = taken from the data's tokenizer at run time. The presets in
        configs/model set ``${oc.select:data.tokenizer.vocab_size,N}``: the data's
        tokenizer size in a run, the published N when the file is read alone.
    hidden_size (H), num_hidden_layers (L), num_attention_heads (A), intermediate_size
        (feed-forward width, 4H in BERT): Devlin et al. 2019 §3, Table in §3 ("BERT-base:
        L=12, H=768, A=12").
    max_position_embeddings: learned absolute positions (BERT: 512).
    type_vocab_size: segment embeddings (2 for A/B segments; 0 = none, DistilBERT).
    hidden_dropout_prob / attention_probs_dropout_prob: 0.1 in BERT and RoBERTa.
    initializer_range: std of the truncated-normal init (0.02).
    family: ``bert`` | ``roberta`` | ``albert`` | ``distilbert``: which Hugging Face class a checkpoint is
        exported to / imported from (``pretrain.models.hf``); the architecture itself is set by the
        keys below, and ``pretrain export`` refuses a family its keys do not fit.
    embedding_size (E): None = H; E < H factorizes the embedding with an E→H projection
        (Lan et al. 2020, §3.1 "Factorized embedding parameterization"; ALBERT: E=128).
    sharing: cross-layer parameter sharing, ``none`` | ``all`` | ``attention`` | ``ffn``
        (Lan et al. 2020, §3.1 "Cross-layer parameter sharing", Table 4).
    pre_ln: LayerNorm before each sublayer plus a final one (Xiong et al. 2020) instead of
        BERT's post-LN.
    position_offset: first position id of a real token; RoBERTa's released models use
        padding_idx + 1 = 2 and give padding position padding_idx (Hugging Face's
        ``RobertaEmbeddings``), so max_position_embeddings = 512 + 2 = 514.
    """

    vocab_size: Optional[int] = None
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: Activation = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    family: Family = "bert"
    embedding_size: Optional[int] = None
    sharing: Sharing = "none"
    pre_ln: bool = False
    position_offset: int = 0


@dataclass
class ElectraConfig:
    """ELECTRA's replaced-token detection (Clark et al. 2020), read by
    ``pretrain.models.electra`` (shapes), ``pretrain.criterions.electra`` (losses) and
    ``pretrain.tasks.electra``; used when ``task: electra``. Every value is checked
    when the run is checked (``pretrain.tasks.electra.check_electra_config``).

    generator_size: the generator's hidden size as a fraction of the discriminator's
        (``model.hidden_size``), in (0, 1]; its feed-forward width is 4x and its heads
        hidden/64 (at least 1), as ``get_generator_config`` in google-research/electra's
        run_pretraining.py does; Table 6: ELECTRA-Small 1/4, Base 1/3, Large 1/4; §3.2 and
        Figure 3: 1/4-1/2 of the discriminator work best.
    generator_layers: the generator's depth as a fraction of ``model.num_hidden_layers``
        (reference ``generator_layers``, 1.0: the same depth).
    disc_weight: λ, the weight of the discriminator loss (§2, Eq. 1; Table 6: 50).
    gen_weight: the weight of the generator's MLM loss (reference ``gen_weight``, 1.0).
    temperature: the generator's logits are divided by it before sampling (reference
        ``temperature``, 1.0).
    disc_positions: ``all`` (the paper: every non-padding token) or ``masked`` (Table 5's
        "ELECTRA 15%": the discriminator loss only over the masked positions).
    """

    generator_size: float = 0.25
    generator_layers: float = 1.0
    disc_weight: float = 50.0
    gen_weight: float = 1.0
    temperature: float = 1.0
    disc_positions: DiscPositions = "all"


@dataclass
class ObjectiveConfig:
    """Training objective (read by ``pretrain.criterions.pretraining``).

    sentence: the sentence-level loss added to MLM; defaults to the data's
        ``sentence_objective`` so the two agree unless set on purpose (ELECTRA: none).
    """

    sentence: SentenceObjective = "${data.sentence_objective}"


@dataclass
class OptimizerConfig:
    """Optimizer (read by ``pretrain.training.optim`` and ``pretrain.training.engine``). Defaults are
    RoBERTa's (Liu et al. 2019, §3.1): AdamW, β1=0.9, β2=0.98, ε=1e-6, weight decay 0.01.

    name: ``adamw`` (decoupled weight decay; BERT §A.2 uses β2=0.999, RoBERTa §3.1 0.98) or
        ``lamb`` (You et al. 2020, Algorithm 2; ALBERT §4.1 trains with it at lr 0.00176,
        batch 4096). Both leave biases and LayerNorm undecayed (``pretrain.training.optim``).
    lamb_impl: which LAMB runs: ``fused`` = DeepSpeed's FusedLamb (CUDA only), ``torch`` =
        ``pretrain.training.lamb.Lamb`` (any device), ``auto`` = fused when CUDA is available, torch
        otherwise. Ignored for adamw.
    """

    name: OptimizerName = "adamw"
    lr: float = 6e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.01
    lamb_impl: LambImpl = "auto"


@dataclass
class ScheduleConfig:
    """Learning-rate schedule (read by ``pretrain.training.optim.schedule_fn``). Every schedule warms
    up linearly from 0 to the peak lr over ``warmup_steps``; then, by ``name``:

    linear: linear decay from the peak to 0 at ``train.max_steps`` (RoBERTa §3.1).
    polynomial: BERT's reference ``optimization.py``: the lr is ``peak · (1 - step /
        max_steps) ^ power`` wherever warmup is over, so the decay is counted from step 0,
        not from the end of warmup (BERT §A.2 "linear decay" is ``power`` 1.0; ALBERT's
        code uses the same function).
    wsd: warmup-stable-decay (Hu et al. 2024, "MiniCPM"): the peak lr until the last
        ``decay_steps`` steps (or the last ``decay_fraction`` of ``max_steps``; set exactly
        one), then a linear decay to 0 (MiniCPM decays exponentially; the linear cooldown
        is Hägele et al. 2024's).
    """

    name: ScheduleName = "linear"
    warmup_steps: int = 100
    power: float = 1.0
    decay_steps: Optional[int] = None
    decay_fraction: Optional[float] = None


@dataclass
class TrainConfig:
    """Training loop (read by ``pretrain.training.loop``).

    global_batch_size: sequences per optimizer step over all ranks
        (= micro batch × gradient accumulation × world size).
    micro_batch_size: the most sequences one rank runs in one forward pass (what fits in
        memory); the loop runs the largest divisor of ``global_batch_size / world size``
        not above it and derives the accumulation (``pretrain.training.engine.split_batch``).
    max_steps: optimizer steps; the token budget of a run is max_steps × global batch.
    precision: ``fp32`` or ``bf16`` (``fp16`` with loss scaling on GPU).
    eval_every / log_every / checkpoint_every: in optimizer steps.
    keep_checkpoints: how many of the newest checkpoints to keep.
    seed: seeds model init, data order and dynamic masks.
    zero_stage: DeepSpeed ZeRO stage 0-3 (Rajbhandari et al. 2020); 1-3 partition the
        optimizer state over ranks, which LAMB's per-tensor trust ratio does not survive
        (refused, ``pretrain.training.engine.deepspeed_config``).
    gradient_clipping: global gradient-norm clip; 0 = off. Default 1.0 (BERT's reference
        code); RoBERTa's Table 9 trains with 0.0 (configs/train/roberta.yaml).
    peak_flops: the peak FLOP/s of one device (one rank) for the model-FLOPs-utilization
        column of the train metrics (``pretrain.training.mfu``); None = the table of known GPUs by
        ``torch.cuda`` device name and precision, and no MFU on CPU.
    """

    global_batch_size: int = 32
    micro_batch_size: int = 32
    max_steps: int = 1000
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    gradient_clipping: float = 1.0
    precision: Precision = "fp32"
    zero_stage: ZeroStage = 0
    eval_every: int = 200
    eval_max_batches: Optional[int] = None
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 42
    peak_flops: Optional[float] = None


@dataclass
class DistillationConfig:
    """Knowledge distillation of a frozen teacher into a shallower student (Sanh et al. 2019,
    "DistilBERT"), read by ``pretrain.models.distil`` and ``pretrain.criterions.distillation``;
    used when ``task: distillation``. The defaults are the released recipe: Hugging Face's
    ``examples/research_projects/distillation`` (README training command, ``distiller.py``,
    ``scripts/extract_distilbert.py``).

    teacher: the frozen teacher: a run directory, ``checkpoints/`` or ``checkpoints/step-*``
        directory of this trainer, or a Hugging Face model directory (``config.json``;
        BertForMaskedLM, BertForPreTraining, RobertaForMaskedLM, DistilBertForMaskedLM). Required.
    layer_selection: which teacher layers initialise the student's L/2 layers (§3 "we
        initialize the student from the teacher by taking one layer out of two"):
        ``extract_distilbert`` = the released ``extract_distilbert.py`` choice, 0, 2, 4, 7, 9,
        11 of 12, generalised as every other layer from the bottom for the first ceil(n/2)
        and every other layer from the top for the rest (L=24: 0..10 even, 13..23 odd);
        ``every_other`` = 0, 2, 4, ... (the paper's wording); ``list`` = ``student_layers``.
    student_layers: teacher layer indices, in order, with ``layer_selection: list``.
    student_init: ``teacher`` (copy embeddings, the selected layers and the MLM head) or
        ``random`` (BERT's initialisation; Table 4 "random weights initialization").
    temperature: T of the softened distributions in the distillation loss (§2; 2.0 in
        ``train.py``).
    alpha_ce: weight of ``KL(teacher_T || student_T) · T²`` (§2 L_ce; README: 5.0).
    alpha_mlm: weight of the student's masked-LM loss (§3 L_mlm; README: 2.0).
    alpha_cos: weight of the cosine embedding loss between the last hidden states of
        student and teacher (§3 L_cos; README: 1.0).
    restrict_ce_to_mask: the distillation loss over the masked positions only (``train.py
        --restrict_ce_to_mask``); default false = over every non-padding token.
    freeze_position_embeddings: keep the student's position embeddings at their initial
        (teacher's) values, left out of the optimizer (``pretrain.models.distil.
        freeze_position_embeddings``): ``train.py --freeze_pos_embs``. The README's
        DistilBERT command passes it, but ``train.py``'s ``freeze_pos_embeddings`` only
        freezes a ``roberta`` or ``gpt2`` student and leaves a ``distilbert`` one trainable,
        so the released BERT → DistilBERT recipe trains them: false there; true
        reproduces the flag for a RoBERTa teacher (DistilRoBERTa).
    """

    teacher: Optional[str] = None
    layer_selection: LayerSelection = "extract_distilbert"
    student_layers: List[int] = field(default_factory=list)
    student_init: StudentInit = "teacher"
    temperature: float = 2.0
    alpha_ce: float = 5.0
    alpha_mlm: float = 2.0
    alpha_cos: float = 1.0
    restrict_ce_to_mask: bool = False
    freeze_position_embeddings: bool = False


# A run name becomes a directory, a Slurm job name and a word in job scripts: keep it to
# characters that mean nothing to a shell, sbatch or a path (``/`` nests, as in ablation/arm).
RUN_NAME_RE = re.compile(r"[A-Za-z0-9._/-]+")


@dataclass
class RunConfig:
    """One pretraining run. ``run_dir`` None = ``runs/<name>``.

    name: ``[A-Za-z0-9._/-]+``, relative (no leading ``/``, no empty, ``.`` or ``..`` part);
        an ablation names its arms ``<ablation>/<arm>``.
    task: what the run trains (``pretrain.tasks.task_class``): ``pretraining`` (MLM +
        NSP/SOP, ``pretrain.tasks.pretraining``), ``distillation`` (a student distilled
        from ``distillation.teacher``, ``pretrain.tasks.distillation``; its ``model``
        section is the student's, written from the teacher when the config loads) or
        ``electra`` (a generator MLM and a replaced-token discriminator,
        ``pretrain.tasks.electra``; ``model`` is the discriminator's shape).
    distillation: the distillation section (``DistillationConfig``); only with
        ``task: distillation``.
    electra: ELECTRA's keys (``ElectraConfig``), read only with ``task: electra``.
    """

    name: str = "run"
    run_dir: Optional[str] = None
    task: TaskName = "pretraining"
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distillation: Optional[DistillationConfig] = None
    electra: ElectraConfig = field(default_factory=ElectraConfig)


def find_configs_root(start: Optional[Path]) -> Path:
    """The nearest ancestor directory named ``configs`` of ``start``, else ./configs."""
    if start is not None:
        for d in [start.resolve(), *start.resolve().parents]:
            if d.name == "configs" and d.is_dir():
                return d
    return Path("configs")


def resolve_preset(preset: str, config_path: Optional[Path]) -> Path:
    """``--preset NAME`` → configs/preset/NAME.yaml (or a path to a YAML file)."""
    p = Path(preset)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise UserError(f"preset file not found: {p}")
        return p
    root = find_configs_root(config_path.parent if config_path else None)
    f = root / "preset" / f"{preset}.yaml"
    if not f.is_file():
        names = sorted(x.stem for x in (root / "preset").glob("*.yaml"))
        raise UserError(f"unknown preset {preset!r} (no {f}); available: {', '.join(names) or 'none'}")
    return f


# A preset's learning rate may depend on what the composed run trains: LAMB scales each
# layer's step by its weight norm (You et al. 2020, Algorithm 2, the trust ratio), so the peak
# lr that trains a small model with Adam barely moves it with LAMB; ELECTRA's discriminator
# collapses to the base rate at the lr masked LM trains at (docs/ablations.md, "Learning rates
# at the small preset"). A table per task, then per optimizer; the task's entry wins.
PRESET_LR_TABLES = {"lr_by_task": TaskName, "lr_by_optimizer": OptimizerName}


def read_preset(preset: str, config_path: Optional[Path]) -> tuple[DictConfig, Dict[str, Dict[str, float]]]:
    """Load ``--preset NAME`` (``resolve_preset``): (its RunConfig keys, its peak learning
    rates: ``{"lr_by_task": {task: lr}, "lr_by_optimizer": {optimizer: lr}}``, each possibly
    empty).

    A preset gives its learning rate either as ``train.optimizer.lr`` (every run) or as the
    tables ``lr_by_task: {electra: LR}`` and ``lr_by_optimizer: {adamw: LR, lamb: LR}``
    (``load_run_config`` takes the entry of the composed run's ``task``, else of its
    ``train.optimizer.name``), not both. Raises UserError naming the preset file for a
    missing file, a table that is not a mapping, an unknown task or optimizer name, a
    non-positive or non-numeric lr, or both forms at once."""
    f = resolve_preset(preset, config_path)
    raw = read_composed(f)
    tables: Dict[str, Dict[str, float]] = {}
    for key, kind in PRESET_LR_TABLES.items():
        table = raw.pop(key) if key in raw else None
        if table is None:
            continue
        names = get_args(kind)
        if not OmegaConf.is_dict(table) or not table:
            raise UserError(f"{f}: {key} must map names ({', '.join(names)}) to learning rates")
        lrs: Dict[str, float] = {}
        for name, lr in table.items():
            if name not in names:
                raise UserError(f"{f}: {key}.{name}: unknown name; valid names: {', '.join(names)}")
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
                raise UserError(f"{f}: {key}.{name}={lr!r} must be a learning rate > 0")
            lrs[str(name)] = float(lr)
        tables[key] = lrs
    if tables and OmegaConf.select(raw, "train.optimizer.lr") is not None:
        raise UserError(f"{f}: sets both train.optimizer.lr and {' and '.join(tables)}; keep one")
    return raw, tables


def _preset_lr(preset: str, tables: Dict[str, Dict[str, float]], cfg: Any) -> float:
    """The preset's lr for composed run config ``cfg`` (``read_preset``). UserError when
    neither table names its task or optimizer."""
    by_task, by_opt = tables.get("lr_by_task", {}), tables.get("lr_by_optimizer", {})
    if cfg.task in by_task:
        return by_task[cfg.task]
    name = cfg.train.optimizer.name
    if name not in by_opt:
        raise UserError(
            f"preset {preset!r} gives no learning rate for task {cfg.task!r} or optimizer {name!r} (lr_by_task: "
            f"{', '.join(by_task) or 'none'}; lr_by_optimizer: {', '.join(by_opt) or 'none'}); add "
            f"lr_by_optimizer.{name} to the preset or pass train.optimizer.lr=LR"
        )
    return by_opt[name]


def read_composed(path: str | Path, _seen: Optional[set] = None) -> DictConfig:
    """Load a YAML file and expand its ``include`` mapping (``section: path`` or a list of
    whole-file paths), recursively. Raises UserError on missing files or include cycles."""
    p = Path(path)
    seen = set(_seen or ())
    key = p.resolve()
    if key in seen:
        raise UserError(f"include cycle through {p}")
    seen.add(key)
    raw = read_yaml(p)
    inc = raw.pop("include", None) if "include" in raw else None
    layers: List[Any] = []
    if inc is not None:
        if isinstance(inc, str) or OmegaConf.is_list(inc):
            for f in [inc] if isinstance(inc, str) else list(inc):
                layers.append(read_composed(p.parent / str(f), seen))
        elif OmegaConf.is_dict(inc):
            for section, f in inc.items():
                layers.append(OmegaConf.create({str(section): read_composed(p.parent / str(f), seen)}))
        else:
            raise UserError(f"{p}: 'include' must be a path, a list of paths or a section: path mapping")
    return OmegaConf.merge(*layers, raw) if layers else raw


def load_run_config(
    path: Optional[str | Path],
    preset: Optional[str] = None,
    overrides: Sequence[str] = (),
    layers: Sequence[Any] = (),
) -> RunConfig:
    """Compose a RunConfig: defaults < ``path`` (with includes) < preset < ``layers`` (e.g.
    an ablation arm) < ``overrides`` (``key=value`` strings). A preset's ``lr_by_task`` /
    ``lr_by_optimizer`` set ``train.optimizer.lr`` for the task and optimizer of the composed
    run, unless a layer or override above the preset sets the lr (``read_preset``).
    Validated; raises UserError."""
    cfg_path = Path(path) if path else None
    parts: List[Any] = []
    if cfg_path is not None:
        parts.append(read_composed(cfg_path))
    preset_lrs: Dict[str, Dict[str, float]] = {}
    if preset:
        preset_part, preset_lrs = read_preset(preset, cfg_path)
        parts.append(preset_part)
    above = [*layers, parse_overrides(overrides)]  # what outranks the preset
    parts.extend(above)
    where = str(cfg_path) if cfg_path else "run config"
    cfg = merge_into(RunConfig, *parts, where=where)
    if preset_lrs and all(OmegaConf.select(OmegaConf.create(p), "train.optimizer.lr") is None for p in above):
        cfg.train.optimizer.lr = _preset_lr(preset, preset_lrs, cfg)
    check_run_name(cfg.name, where)
    check_data_config(cfg.data)
    if cfg.task == "distillation" or cfg.distillation is not None:
        from pretrain.models.distil import resolve_distillation

        resolve_distillation(cfg, where)  # the student's model section and the teacher's tokenizer
    return cfg


def check_run_name(name: str, where: str = "run config") -> None:
    """Raise UserError unless ``name`` matches ``RUN_NAME_RE`` and is a relative path without
    empty, ``.`` or ``..`` parts (it becomes ``runs/<name>``, a job name and a script word)."""
    parts = name.split("/")
    if not RUN_NAME_RE.fullmatch(name) or any(p in ("", ".", "..") for p in parts):
        raise UserError(
            f"{where}: name={name!r} must be letters, digits, '.', '_', '-' and '/' between non-empty "
            "parts (no '..'), e.g. name=roberta-small; it becomes runs/<name> and the Slurm job name"
        )


def run_dir(cfg: RunConfig) -> Path:
    """Directory of a run's metrics, checkpoints and resolved config."""
    return Path(cfg.run_dir) if cfg.run_dir else Path("runs") / cfg.name


def to_yaml(cfg: Any) -> str:
    """Resolved YAML text of a config (interpolations expanded)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_dict(cfg: Any) -> Dict[str, Any]:
    """Resolved plain-dict form of a config."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
