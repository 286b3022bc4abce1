"""DistilBERT's teacher and student (Sanh et al. 2019, §3 "Student architecture" and
"Student initialization"): which teacher, the student's shape, which teacher layers it
starts from, and copying them.

- The teacher (``distillation.teacher``) is a checkpoint of this trainer (a run directory,
  its ``checkpoints/`` or one ``checkpoints/step-*``) or a Hugging Face model directory
  (``pretrain.models.hf.from_hf``). Its shape and tokenizer are read when the run config
  loads (``resolve_distillation``), its weights when the task builds its modules
  (``load_teacher``); nothing read executes code (weights-only loading, JSON state).
- The student (``student_model_config``) has the teacher's shape with the layers of
  ``select_layers`` — half of them by default — and, for a BERT teacher, no token-type
  embedding and no pooler (§3: "the token-type embeddings and the pooler are removed while
  the number of layers is reduced by a factor of 2"): ``model.family: distilbert``,
  exported as ``DistilBertForMaskedLM``. A RoBERTa teacher gives a RoBERTa-shaped student
  (Hugging Face's DistilRoBERTa keeps its one token type).
- ``init_student`` copies the embeddings, the selected blocks and the MLM head
  (``scripts/extract_distilbert.py`` of Hugging Face's ``examples/research_projects/
  distillation``; that script copies the MLM transform only with ``--vocab_transform``,
  here it always is).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, List, Optional, Tuple

from omegaconf import OmegaConf

from common.configfile import merge_into
from common.errors import UserError

# A Hugging Face teacher's tokenizer kind, by model family (the special tokens
# ``data_prep.tokenizer`` expects of each kind).
_HF_TOKENIZER_KIND = {"bert": "wordpiece", "distilbert": "wordpiece", "roberta": "bpe"}


def select_layers(num_layers: int, rule: str, explicit: List[int]) -> List[int]:
    """Teacher layer indices the student's layers are initialised from, in order.

    Args:
        num_layers: the teacher's layer count L (>= 1).
        rule: ``distillation.layer_selection``: ``extract_distilbert`` — n = L // 2 (at least
            1) layers: every other one from layer 0 for the first ceil(n/2), every other one
            ending at layer L-1 for the rest; L=12 gives Hugging Face's 0, 2, 4, 7, 9, 11
            (``scripts/extract_distilbert.py``); ``every_other`` — 0, 2, 4, ... (n layers;
            Sanh et al. §3 "taking one layer out of two"); ``list`` — ``explicit``.
        explicit: ``distillation.student_layers`` (used with ``list`` only).
    Returns:
        int indices in [0, L), strictly increasing.
    Raises:
        UserError: a list that is empty, unordered, repeats or leaves [0, L).
    """
    n = max(1, num_layers // 2)
    if rule == "every_other":
        return list(range(0, 2 * n, 2))
    if rule == "extract_distilbert":
        low = math.ceil(n / 2)
        return list(range(0, 2 * low, 2)) + sorted(num_layers - 1 - 2 * k for k in range(n - low))
    layers = [int(i) for i in explicit]
    if not layers:
        raise UserError("distillation.layer_selection=list needs distillation.student_layers, e.g. [0,2,4,7,9,11]")
    if any(i < 0 or i >= num_layers for i in layers) or layers != sorted(set(layers)):
        raise UserError(f"distillation.student_layers={layers} must be increasing teacher layer indices in [0, {num_layers})")
    return layers


def is_hf_directory(path: str | Path) -> bool:
    """A Hugging Face model directory (it holds config.json) rather than a run of ours."""
    return (Path(path) / "config.json").is_file()


def teacher_spec(path: str) -> Tuple[Any, str, Optional[Path], Optional[str]]:
    """What the teacher at ``path`` is, without reading its weights.

    Returns:
        ``(ModelConfig, sentence objective, tokenizer.json path or None, tokenizer kind or
        None)``: for a run of ours its model config, objective, the tokenizer of its shards
        (``pretrain.models.hf.find_run_tokenizer``) and ``data.tokenizer.kind``; for a
        Hugging Face directory its config (``model_config_from_hf``), ``tokenizer.json`` if
        present and the kind of its family.
    Raises:
        UserError: no such path, a damaged checkpoint, an unsupported Hugging Face class.
    """
    from pretrain.models.hf import _transformers, find_run_tokenizer, model_config_from_hf

    p = Path(path)
    if not p.exists():
        raise UserError(f"distillation.teacher={path}: no such file or directory; give a run directory of this "
                        "trainer (e.g. train one: pretrain train configs/recipe/bert.yaml --preset smoke) or a Hugging "
                        "Face model directory")
    if is_hf_directory(p):
        try:
            config = _transformers().AutoConfig.from_pretrained(p)
        except (ValueError, KeyError, OSError) as e:
            raise UserError(f"distillation.teacher: cannot read {p / 'config.json'}: {str(e).strip().splitlines()[0]}") from None
        model_cfg, sentence = model_config_from_hf(config)
        tok = p / "tokenizer.json"
        return model_cfg, sentence, tok if tok.is_file() else None, _HF_TOKENIZER_KIND.get(model_cfg.family)
    from pretrain.training.checkpoint import read_run_config

    run_cfg, ckpt = read_run_config(p)
    try:
        tok: Optional[Path] = find_run_tokenizer(p, run_cfg)
    except UserError:
        tok = None
    return run_cfg.model, run_cfg.objective.sentence, tok, run_cfg.data.tokenizer.kind


def student_model_config(teacher_cfg, layers: List[int]):
    """The student's ModelConfig: the teacher's with ``len(layers)`` layers; a BERT (or
    DistilBERT) teacher gives ``family: distilbert`` with no token-type embedding.
    Raises UserError for a teacher whose blocks are shared (ALBERT): there are no layers
    to take one of two from."""
    from pretrain.config import ModelConfig

    if teacher_cfg.sharing != "none" or teacher_cfg.family == "albert":
        raise UserError(f"distillation.teacher is an {teacher_cfg.family} model with sharing={teacher_cfg.sharing}; "
                        "a student takes layers of an unshared BERT or RoBERTa teacher")
    d = OmegaConf.to_container(OmegaConf.structured(teacher_cfg), resolve=True)
    d["num_hidden_layers"] = len(layers)
    if teacher_cfg.family in ("bert", "distilbert"):
        d.update(family="distilbert", type_vocab_size=0)
    return merge_into(ModelConfig, d, where="distillation student")


def check_distillation_config(d) -> None:
    """Value checks of a DistillationConfig that need no teacher. Raises UserError."""
    if d.temperature <= 0:
        raise UserError(f"distillation.temperature={d.temperature} must be > 0")
    for key in ("alpha_ce", "alpha_mlm", "alpha_cos"):
        if getattr(d, key) < 0:
            raise UserError(f"distillation.{key}={getattr(d, key)} must be >= 0")
    if d.alpha_ce + d.alpha_mlm + d.alpha_cos <= 0:
        raise UserError("distillation.alpha_ce, alpha_mlm and alpha_cos are all 0: nothing to train; set one > 0")
    if d.layer_selection != "list" and len(d.student_layers):
        raise UserError(f"distillation.student_layers is set but layer_selection={d.layer_selection}; "
                        "set distillation.layer_selection=list to use it, or remove it")


def resolve_distillation(cfg, where: str) -> None:
    """Complete a ``task: distillation`` RunConfig in place when it loads: the ``model``
    section becomes the student's (``student_model_config`` of the teacher and
    ``select_layers``; whatever the layers set there is replaced, so a preset's model shape
    does not apply), and ``data.tokenizer`` the teacher's (``path`` and ``kind``) unless
    ``data.tokenizer.path`` is set. Idempotent, so a saved config.yaml loads to itself.

    Raises:
        UserError (prefixed by ``where``): a distillation section without ``task:
        distillation`` or the reverse, no teacher, bad values, a sentence objective (the
        student has no pooler: DistilBERT drops NSP), a teacher without a tokenizer.
    """
    if cfg.task != "distillation":
        raise UserError(f"{where}: a distillation section needs task=distillation (task={cfg.task})")
    d = cfg.distillation
    if d is None or not d.teacher:
        raise UserError(f"{where}: task=distillation needs distillation.teacher=PATH (a run directory of this trainer "
                        "or a Hugging Face model directory)")
    try:
        check_distillation_config(d)
        if cfg.objective.sentence != "none":
            raise UserError(f"objective.sentence={cfg.objective.sentence}: the student has no pooler and DistilBERT trains "
                            "without NSP (Sanh et al. §3); use data.format=full_sentences data.sentence_objective=none")
        teacher_cfg, _, tok_path, tok_kind = teacher_spec(d.teacher)
        layers = select_layers(teacher_cfg.num_hidden_layers, d.layer_selection, list(d.student_layers))
        cfg.model = student_model_config(teacher_cfg, layers)
        if cfg.data.tokenizer.path is None:
            if tok_path is None:
                raise UserError(f"distillation.teacher={d.teacher} has no tokenizer.json to build the data with; "
                                "set data.tokenizer.path to the teacher's tokenizer")
            cfg.data.tokenizer.path = str(tok_path)
            if tok_kind is not None:
                cfg.data.tokenizer.kind = tok_kind
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def load_teacher(path: str):
    """The teacher's ``(ModelConfig, BertForPretraining)`` with its weights, in eval mode
    with gradients off (float32, CPU). Raises UserError as ``teacher_spec``,
    ``pretrain.models.hf.from_hf`` and ``pretrain.training.checkpoint.load_model_state``."""
    from pretrain.models.encoder import build_model

    if is_hf_directory(path):
        from pretrain.models.hf import from_hf

        cfg, model = from_hf(path)
    else:
        from pretrain.training.checkpoint import load_model_state

        run_cfg, state = load_model_state(path)
        cfg, model = run_cfg.model, build_model(run_cfg.model, run_cfg.objective.sentence)
        model.load_state_dict(state)
    return cfg, model.float().eval().requires_grad_(False)


def init_student(student, teacher, layers: List[int]) -> None:
    """Copy the teacher's weights into ``student`` (both ``BertForPretraining``): the
    embeddings (not the token-type embedding when the student has none), block
    ``layers[i]`` of the teacher into block ``i``, the final LayerNorm of a pre-LN encoder
    and the MLM head (transform, LayerNorm, bias; the decoder is tied to the word
    embeddings). ``scripts/extract_distilbert.py``. Raises ValueError on shapes that
    differ (a student not built by ``student_model_config``)."""
    import torch

    src = teacher.state_dict()
    block = re.compile(r"encoder\.(attention|ffn)\.(\d+)\.(.+)")
    out = {}
    for name in student.state_dict():
        m = block.fullmatch(name)
        key = f"encoder.{m[1]}.{layers[int(m[2])]}.{m[3]}" if m else name
        if key not in src or src[key].shape != student.state_dict()[name].shape:
            raise ValueError(f"student weight {name} has no teacher counterpart {key} of the same shape")
        out[name] = src[key]
    with torch.no_grad():
        student.load_state_dict(out)


def apply_freezing(student, distillation_cfg) -> None:
    """Freeze what ``distillation_cfg`` (a DistillationConfig) asks to keep fixed, the one
    reader of ``distillation.freeze_position_embeddings``: called where the task builds the
    student and where a checkpoint reader rebuilds it (``pretrain.tasks.build_trainable``),
    so both see the same optimizer groups."""
    if distillation_cfg is not None and distillation_cfg.freeze_position_embeddings:
        freeze_position_embeddings(student)


def freeze_position_embeddings(student) -> None:
    """Turn gradients off for the student's position embedding table (float ``[P, E]``,
    ``encoder.embeddings.position_embeddings.weight``), so the optimizer groups
    (``pretrain.training.optim.param_groups``) leave it out and it keeps the values it was
    initialised with: ``freeze_pos_embeddings`` of Hugging Face's ``examples/
    research_projects/distillation/train.py`` (which acts on RoBERTa and GPT-2 students;
    ``distillation.freeze_position_embeddings``). It stays in the module's state dict, so
    checkpoints and exports carry it."""
    student.encoder.embeddings.position_embeddings.weight.requires_grad_(False)
