"""Export to and import from Hugging Face ``transformers`` model directories.

Which class holds a model is decided by ``model.family`` and whether it has a sentence head
(``EXPORT_CLASSES``): bert → BertForPreTraining (head = ``bert.pooler`` +
``cls.seq_relationship``) or BertForMaskedLM; roberta → RobertaForMaskedLM (no class with a
sentence head: export with ``drop_sentence_head``); albert → AlbertForPreTraining (head =
``albert.pooler`` + ``sop_classifier``) or AlbertForMaskedLM.

Weights map one to one (``hf_names``); a layout no class can hold (pre-LN, sharing only
attention or only the feed-forward blocks, factorized or shared layers outside the ALBERT
family, RoBERTa without its position offset) is refused with a one-line UserError before
anything is written. The objective a head was trained for is stored in config.json under
``sentence_objective`` so an import gives back the same model.

``transformers`` and ``safetensors`` are imported lazily: they are optional dependencies
(``pip install -e ".[hf]"``).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from common.atomic import replace_dir
from common.configfile import merge_into
from common.diskspace import disk_full_is_user_error
from common.errors import UserError
from pretrain.models.encoder import (
    BertForPretraining,
    build_model,
    check_model_config,
    embedding_size,
)

# (family, has sentence head) → transformers class name.
EXPORT_CLASSES: Dict[Tuple[str, bool], str] = {
    ("bert", True): "BertForPreTraining",
    ("bert", False): "BertForMaskedLM",
    ("roberta", False): "RobertaForMaskedLM",
    ("albert", True): "AlbertForPreTraining",
    ("albert", False): "AlbertForMaskedLM",
    ("distilbert", False): "DistilBertForMaskedLM",
}
# transformers class name → (family, objective its sentence head was trained for).
IMPORT_CLASSES: Dict[str, Tuple[str, str]] = {
    "BertForPreTraining": ("bert", "nsp"),
    "BertForMaskedLM": ("bert", "none"),
    "RobertaForMaskedLM": ("roberta", "none"),
    "AlbertForPreTraining": ("albert", "sop"),
    "AlbertForMaskedLM": ("albert", "none"),
    "DistilBertForMaskedLM": ("distilbert", "none"),
}
# Class-name prefix of each family in transformers: ``BertModel``, ``BertForSequenceClassification``,
# ``RobertaForTokenClassification`` ... hold the same encoder and no masked-LM head; fine-tuning
# reads their encoder (``from_hf(..., mlm_head=False)``), through the family's MaskedLM class.
FAMILY_CLASS_PREFIX = {"bert": "Bert", "roberta": "Roberta", "albert": "Albert", "distilbert": "DistilBert"}
# What transformers' from_pretrained reads weights from, single-file or sharded (an index).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
SENTENCE_KEY = "sentence_objective"  # extra config.json field written by export_hf
_ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "relu": "relu"}

# Our parameter names → Hugging Face's, per family. ``{b}`` is the base-model prefix;
# ``{i}`` the block index (an ALBERT layer group, of one layer each).
_EMB = [(r"encoder\.embeddings\.(word_embeddings|position_embeddings|token_type_embeddings|LayerNorm)\.(\w+)", "{b}.embeddings.{0}.{1}")]
_RULES: Dict[str, List[Tuple[str, str]]] = {
    "bert": _EMB
    + [
        (r"encoder\.attention\.(\d+)\.(query|key|value)\.(\w+)", "{b}.encoder.layer.{0}.attention.self.{1}.{2}"),
        (r"encoder\.attention\.(\d+)\.(dense|LayerNorm)\.(\w+)", "{b}.encoder.layer.{0}.attention.output.{1}.{2}"),
        (r"encoder\.ffn\.(\d+)\.intermediate\.(\w+)", "{b}.encoder.layer.{0}.intermediate.dense.{1}"),
        (r"encoder\.ffn\.(\d+)\.output\.(\w+)", "{b}.encoder.layer.{0}.output.dense.{1}"),
        (r"encoder\.ffn\.(\d+)\.LayerNorm\.(\w+)", "{b}.encoder.layer.{0}.output.LayerNorm.{1}"),
        (r"mlm\.(dense|LayerNorm)\.(\w+)", "cls.predictions.transform.{0}.{1}"),
        (r"mlm\.bias", "cls.predictions.bias"),
        (r"sentence_head\.pooler\.(\w+)", "{b}.pooler.dense.{0}"),
        (r"sentence_head\.classifier\.(\w+)", "cls.seq_relationship.{0}"),
    ],
    "albert": _EMB
    + [
        (r"encoder\.embeddings\.projection\.(\w+)", "{b}.encoder.embedding_hidden_mapping_in.{0}"),
        (r"encoder\.attention\.(\d+)\.(\w+)\.(\w+)", "{b}.encoder.albert_layer_groups.{0}.albert_layers.0.attention.{1}.{2}"),
        (r"encoder\.ffn\.(\d+)\.intermediate\.(\w+)", "{b}.encoder.albert_layer_groups.{0}.albert_layers.0.ffn.{1}"),
        (r"encoder\.ffn\.(\d+)\.output\.(\w+)", "{b}.encoder.albert_layer_groups.{0}.albert_layers.0.ffn_output.{1}"),
        (r"encoder\.ffn\.(\d+)\.LayerNorm\.(\w+)", "{b}.encoder.albert_layer_groups.{0}.albert_layers.0.full_layer_layer_norm.{1}"),
        (r"mlm\.(dense|LayerNorm)\.(\w+)", "predictions.{0}.{1}"),
        (r"mlm\.bias", "predictions.bias"),
        (r"sentence_head\.pooler\.(\w+)", "{b}.pooler.{0}"),
        (r"sentence_head\.classifier\.(\w+)", "sop_classifier.classifier.{0}"),
    ],
}
# DistilBERT (transformers' modeling_distilbert): q/k/v/out_lin, sa_layer_norm after
# attention, ffn.lin1/lin2 and output_layer_norm after the feed-forward block; the MLM head
# is vocab_transform, vocab_layer_norm and vocab_projector (tied to the word embeddings).
_RULES["distilbert"] = [
    (r"encoder\.embeddings\.(word_embeddings|position_embeddings|LayerNorm)\.(\w+)", "{b}.embeddings.{0}.{1}"),
    (r"encoder\.attention\.(\d+)\.query\.(\w+)", "{b}.transformer.layer.{0}.attention.q_lin.{1}"),
    (r"encoder\.attention\.(\d+)\.key\.(\w+)", "{b}.transformer.layer.{0}.attention.k_lin.{1}"),
    (r"encoder\.attention\.(\d+)\.value\.(\w+)", "{b}.transformer.layer.{0}.attention.v_lin.{1}"),
    (r"encoder\.attention\.(\d+)\.dense\.(\w+)", "{b}.transformer.layer.{0}.attention.out_lin.{1}"),
    (r"encoder\.attention\.(\d+)\.LayerNorm\.(\w+)", "{b}.transformer.layer.{0}.sa_layer_norm.{1}"),
    (r"encoder\.ffn\.(\d+)\.intermediate\.(\w+)", "{b}.transformer.layer.{0}.ffn.lin1.{1}"),
    (r"encoder\.ffn\.(\d+)\.output\.(\w+)", "{b}.transformer.layer.{0}.ffn.lin2.{1}"),
    (r"encoder\.ffn\.(\d+)\.LayerNorm\.(\w+)", "{b}.transformer.layer.{0}.output_layer_norm.{1}"),
    (r"mlm\.dense\.(\w+)", "vocab_transform.{0}"),
    (r"mlm\.LayerNorm\.(\w+)", "vocab_layer_norm.{0}"),
    (r"mlm\.bias", "vocab_projector.bias"),
]
_RULES["roberta"] = [r for r in _RULES["bert"] if not r[0].startswith(("mlm", "sentence_head"))] + [
    (r"mlm\.dense\.(\w+)", "lm_head.dense.{0}"),
    (r"mlm\.LayerNorm\.(\w+)", "lm_head.layer_norm.{0}"),
    (r"mlm\.bias", "lm_head.bias"),
]


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError('Hugging Face export/import needs transformers: pip install -e ".[hf]"') from None
    return transformers


def check_exportable(cfg, sentence: str, drop_sentence_head: bool = False) -> str:
    """The transformers class name that holds a model of ModelConfig ``cfg`` trained with
    ``sentence``; raises UserError (one line) for a layout no class can hold."""
    check_model_config(cfg)
    fam = cfg.family
    if cfg.pre_ln:
        raise UserError("no Hugging Face BERT/RoBERTa/ALBERT class holds a pre-LN encoder (model.pre_ln=true)")
    if cfg.sharing in ("attention", "ffn"):
        raise UserError(
            f"no Hugging Face class shares only the {'attention' if cfg.sharing == 'attention' else 'feed-forward'} "
            "blocks (model.sharing=" + cfg.sharing + "); ALBERT shares all or nothing"
        )
    if fam != "albert" and (embedding_size(cfg) != cfg.hidden_size or cfg.sharing != "none"):
        raise UserError(
            f"model.family={fam} cannot hold a factorized embedding or shared layers; set model.family=albert to export as ALBERT"
        )
    if fam == "roberta":
        if cfg.position_offset < 1:
            raise UserError("model.family=roberta needs model.position_offset = pad id + 1 (2 for RoBERTa) to match RobertaEmbeddings")
        if cfg.hidden_act != "gelu":
            raise UserError(f"RobertaForMaskedLM's LM head always applies erf GELU; model.hidden_act={cfg.hidden_act} cannot be exported as RoBERTa")
    elif cfg.position_offset != 0:
        raise UserError(f"model.family={fam} has no position offset; model.position_offset={cfg.position_offset} needs family roberta")
    if fam == "distilbert":
        if cfg.type_vocab_size != 0:
            raise UserError(f"DistilBertForMaskedLM has no token-type embedding; model.type_vocab_size={cfg.type_vocab_size} needs 0")
        if cfg.layer_norm_eps != 1e-12:
            raise UserError(f"DistilBERT's LayerNorms use eps 1e-12; model.layer_norm_eps={cfg.layer_norm_eps} cannot be exported as DistilBERT")
    elif cfg.type_vocab_size < 1:
        raise UserError(f"model.family={fam} needs a token-type embedding (model.type_vocab_size >= 1); without one, use family distilbert")
    head = sentence != "none" and not drop_sentence_head
    if (fam, head) not in EXPORT_CLASSES:
        raise UserError(f"{EXPORT_CLASSES[(fam, False)]} has no sentence head for objective {sentence}; export with --drop-sentence-head")
    return EXPORT_CLASSES[(fam, head)]


def hf_names(cfg, keys: List[str]) -> Dict[str, str]:
    """Map our state-dict ``keys`` to Hugging Face names for ``cfg.family``. Raises
    UserError for a key the family has no place for."""
    base = cfg.family
    out = {}
    for k in keys:
        for pattern, template in _RULES[base]:
            m = re.fullmatch(pattern, k)
            if m:
                out[k] = template.format(*m.groups(), b=base)
                break
        else:
            raise UserError(f"parameter {k} has no counterpart in Hugging Face's {base} models")
    return out


def encoder_config_kwargs(cfg, sizes=None) -> Dict[str, Any]:
    """The keyword arguments that transformers' BERT, RoBERTa, ALBERT and ELECTRA configs
    name alike, from ModelConfig ``cfg``: vocabulary, dropout, positions, token types,
    initializer range, LayerNorm eps, and the layer sizes (hidden, layers, heads,
    intermediate) of ``sizes`` (default ``cfg``; ELECTRA's generator has sizes of its own)."""
    s = cfg if sizes is None else sizes
    return dict(
        vocab_size=cfg.vocab_size,
        hidden_size=s.hidden_size,
        num_hidden_layers=s.num_hidden_layers,
        num_attention_heads=s.num_attention_heads,
        intermediate_size=s.intermediate_size,
        hidden_act=cfg.hidden_act,
        hidden_dropout_prob=cfg.hidden_dropout_prob,
        attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size,
        initializer_range=cfg.initializer_range,
        layer_norm_eps=cfg.layer_norm_eps,
    )


def hf_config(cfg, sentence: str, pad_token_id: Optional[int] = None, bos_token_id: Optional[int] = None, eos_token_id: Optional[int] = None):
    """A transformers config for ModelConfig ``cfg`` (family's config class), with
    ``architectures`` and our ``sentence_objective`` recorded."""
    tf = _transformers()
    if cfg.family == "distilbert":
        config = tf.DistilBertConfig(
            vocab_size=cfg.vocab_size, max_position_embeddings=cfg.max_position_embeddings, sinusoidal_pos_embds=False,
            n_layers=cfg.num_hidden_layers, n_heads=cfg.num_attention_heads, dim=cfg.hidden_size,
            hidden_dim=cfg.intermediate_size, dropout=cfg.hidden_dropout_prob,
            attention_dropout=cfg.attention_probs_dropout_prob, activation=cfg.hidden_act,
            initializer_range=cfg.initializer_range, **({"pad_token_id": pad_token_id} if pad_token_id is not None else {}))
        setattr(config, SENTENCE_KEY, sentence)
        return config
    common = encoder_config_kwargs(cfg)
    if cfg.family == "roberta":
        # RobertaEmbeddings gives padding position pad_token_id and real tokens pad_token_id+1...
        common["pad_token_id"] = cfg.position_offset - 1
    elif pad_token_id is not None:
        common["pad_token_id"] = pad_token_id
    for key, value in (("bos_token_id", bos_token_id), ("eos_token_id", eos_token_id)):
        if value is not None:
            common[key] = value
    if cfg.family == "albert":
        common.update(
            embedding_size=embedding_size(cfg),
            num_hidden_groups=1 if cfg.sharing == "all" else cfg.num_hidden_layers,
            inner_group_num=1,
        )
    cls = {"bert": tf.BertConfig, "roberta": tf.RobertaConfig, "albert": tf.AlbertConfig}[cfg.family]
    config = cls(**common)
    setattr(config, SENTENCE_KEY, sentence)
    return config


def export_hf(
    cfg,
    sentence: str,
    state_dict: Dict[str, torch.Tensor],
    out: str | Path,
    tokenizer: Optional[Tuple[str | Path, str]] = None,
    drop_sentence_head: bool = False,
) -> Path:
    """Write a Hugging Face model directory: config.json, model.safetensors and, given
    ``tokenizer``, the tokenizer files.

    Args:
        cfg: the ModelConfig the weights were trained with (vocab_size set).
        sentence: the objective the model was trained with (none | nsp | sop).
        state_dict: ``build_model(cfg, sentence).state_dict()``-shaped float tensors.
        out: the output directory (created).
        tokenizer: ``(tokenizer.json path, tokenizer.kind)``; wrapped as
            PreTrainedTokenizerFast with the kind's special tokens (``<s>``/``</s>`` also as
            bos/eos for RoBERTa).
        drop_sentence_head: leave out the NSP/SOP head (needed for RoBERTa, whose HF class
            has none).
    Returns:
        ``out`` as a Path.
    Raises:
        UserError: a layout no HF class holds, weights that do not fit ``cfg``, a tokenizer
            larger than the vocabulary or (RoBERTa) whose pad id disagrees with the offset.
    """
    tf = _transformers()
    class_name = check_exportable(cfg, sentence, drop_sentence_head)
    ours = build_model(cfg, sentence)
    try:
        ours.load_state_dict(state_dict)
    except RuntimeError as e:
        raise UserError(f"weights do not fit model config ({_first_line(e)}); was the checkpoint trained with another architecture?") from None
    tok = _wrap_tokenizer(cfg, tokenizer) if tokenizer is not None else None
    ids = {}
    if tok is not None:
        ids = dict(pad_token_id=tok.pad_token_id)
        if cfg.family == "roberta":
            ids.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    head = sentence if sentence != "none" and not drop_sentence_head else "none"
    config = hf_config(cfg, head, **ids)
    config.architectures = [class_name]
    model = getattr(tf, class_name)(config).eval()
    keys = [k for k in ours.state_dict() if not (drop_sentence_head and k.startswith("sentence_head."))]
    names = hf_names(cfg, keys)
    sd = ours.state_dict()
    hf_sd = {names[k]: sd[k] for k in keys}
    if cfg.family == "albert" and embedding_size(cfg) == cfg.hidden_size:
        # AlbertTransformer always projects E→H; with E = H ours has no projection, which
        # is the identity map.
        proj = "albert.encoder.embedding_hidden_mapping_in"
        hf_sd[proj + ".weight"] = torch.eye(cfg.hidden_size)
        hf_sd[proj + ".bias"] = torch.zeros(cfg.hidden_size)
    missing, unexpected = model.load_state_dict(hf_sd, strict=False)
    untied = [k for k in missing if not k.endswith(("decoder.weight", "decoder.bias", "vocab_projector.weight"))]
    if untied or unexpected:
        raise UserError(f"{class_name} does not take these weights (missing {untied[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    out = Path(out)
    # Written beside OUT first, then moved in: an export that fails (a full disk) leaves no
    # half-written directory that would load as a model.
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with disk_full_is_user_error(out.parent):
            tmp.mkdir(parents=True)
            model.save_pretrained(tmp, safe_serialization=True)
            if tok is not None:
                tok.save_pretrained(tmp)
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def check_export_dir(out: str | Path) -> None:
    """OUT may be new, an empty directory, or an earlier export (it has config.json, or
    discriminator/config.json for ELECTRA), which is replaced. Raises UserError for a file,
    or a directory with other files (they would be deleted or mixed with the export's)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"export directory {out} exists and is a file; pass a new directory")
    earlier = (out / "config.json").is_file() or (out / "discriminator" / "config.json").is_file()  # ELECTRA: two parts
    if out.is_dir() and any(out.iterdir()) and not earlier:
        raise UserError(f"export directory {out} holds other files and is not an earlier export (no config.json); "
                        "pass a new or empty directory")


def _replace_dir(new: Path, out: Path) -> None:
    """Move directory ``new`` to ``out``, replacing an empty ``out`` or an earlier export:
    only when every entry of ``out`` is one the new export writes too, so a model directory
    holding anything else (a README, training files) is never deleted. Raises UserError."""
    check_export_dir(out)
    if out.is_dir():
        foreign = sorted({p.name for p in out.iterdir()} - {p.name for p in new.iterdir()})
        if foreign:
            raise UserError(f"export directory {out} holds files this export does not write ({', '.join(foreign[:3])}); "
                            "pass a new or empty directory")
    replace_dir(new, out)


def export_run(cfg, state_dict: Dict[str, torch.Tensor], out: str | Path, tokenizer_path: Optional[str | Path], drop_sentence_head: bool = False) -> Path:
    """``export_hf`` for a RunConfig ``cfg`` (its model, objective and tokenizer kind); an
    ELECTRA run (``task=electra``) is written as ``out/discriminator`` and
    ``out/generator`` (``pretrain.models.hf_electra.export_electra``)."""
    tok = (tokenizer_path, cfg.data.tokenizer.kind) if tokenizer_path is not None else None
    if cfg.task == "electra":
        from pretrain.models.hf_electra import export_electra

        return export_electra(cfg.model, cfg.electra, state_dict, out, tok)
    return export_hf(cfg.model, cfg.objective.sentence, state_dict, out, tok, drop_sentence_head)


def export_checkpoint(ckpt: str | Path, out: str | Path, tokenizer_path: Optional[str | Path] = None, drop_sentence_head: bool = False) -> Path:
    """Export a training checkpoint (a run directory, its checkpoints/ or one step-*
    directory) with the tokenizer of the run's shards (``find_run_tokenizer``) unless
    ``tokenizer_path`` is given. Raises UserError as ``export_hf``, and for an ``out`` that
    ``check_export_dir`` refuses or that lies inside the run directory."""
    from pretrain.training.checkpoint import load_model_state
    from pretrain.training.rundir import run_of

    check_export_dir(out)
    run = run_of(Path(ckpt))
    where = Path(out).resolve()
    if where == run.resolve() or run.resolve() in where.parents:
        # The run directory is the trainer's: a config.json there would make the run read as
        # a Hugging Face directory, and pretrain tables / collect walk everything below it.
        raise UserError(f"export directory {out} is inside the run directory {run}; write it elsewhere, e.g. hf/{run.name}")
    cfg, state = load_model_state(ckpt)
    tok = Path(tokenizer_path) if tokenizer_path else find_run_tokenizer(Path(ckpt), cfg)
    return export_run(cfg, state, out, tok, drop_sentence_head)


def find_run_tokenizer(ckpt: Path, cfg) -> Path:
    """The tokenizer.json a run trained with: the shard directory named in the run's
    summary.json, else ``data.tokenizer.path``, else the data config's shard directory.
    Raises UserError naming the places tried."""
    from data_prep.config import resolve_output_dir
    from data_prep.shards import TOKENIZER_FILE
    from pretrain.training.rundir import SUMMARY, read_summary

    tried = []
    for run in [ckpt, *ckpt.resolve().parents][:4]:
        if (run / SUMMARY).is_file():
            data_dir = read_summary(run).get("data_dir")  # UserError for a damaged one
            if data_dir:
                tried.append(Path(data_dir) / TOKENIZER_FILE)
            break
    if cfg.data.tokenizer.path:
        tried.append(Path(cfg.data.tokenizer.path))
    tried.append(resolve_output_dir(cfg.data) / TOKENIZER_FILE)
    for p in tried:
        if p.is_file():
            return p
    raise UserError(f"no tokenizer.json found for {ckpt} (tried {', '.join(map(str, tried))}); pass --tokenizer PATH")


def _wrap_tokenizer(cfg, tokenizer: Tuple[str | Path, str]):
    from data_prep.tokenizer import SPECIAL_TOKENS, load_tokenizer

    tf = _transformers()
    path, kind = tokenizer
    info = load_tokenizer(path, kind)  # UserError for a missing file or missing special tokens
    if info.vocab_size > cfg.vocab_size:
        raise UserError(f"tokenizer {path} has {info.vocab_size} tokens, more than model.vocab_size={cfg.vocab_size}")
    if cfg.family == "roberta" and info.pad_id != cfg.position_offset - 1:
        raise UserError(
            f"RoBERTa derives positions from the pad id: tokenizer pad id {info.pad_id} must equal model.position_offset - 1 = {cfg.position_offset - 1}"
        )
    roles = SPECIAL_TOKENS[kind]
    special = {f"{role}_token": token for role, token in roles.items()}
    if cfg.family == "roberta":
        special.update(bos_token=roles["cls"], eos_token=roles["sep"])
    return tf.PreTrainedTokenizerFast(
        tokenizer_file=str(path), model_max_length=cfg.max_position_embeddings - cfg.position_offset, **special
    )


def import_class(config, mlm_head: bool = True) -> Tuple[str, str, str]:
    """``(transformers class to load with, family, sentence objective)`` for a transformers
    config. ``architectures[0]`` one of ``IMPORT_CLASSES``: that class. With ``mlm_head=False``
    (fine-tuning, which needs only the encoder) also any class of a family in
    ``FAMILY_CLASS_PREFIX`` (``BertModel``, ``RobertaForSequenceClassification`` ...) or none
    named: loaded through the family's MaskedLM class, sentence objective none. Raises
    UserError for any other class."""
    arch = (getattr(config, "architectures", None) or [None])[0]
    if arch in IMPORT_CLASSES:
        family, sentence = IMPORT_CLASSES[arch]
        return arch, family, sentence
    family = getattr(config, "model_type", None)
    prefix = FAMILY_CLASS_PREFIX.get(family)
    if not mlm_head and prefix and (arch is None or (arch.startswith(prefix) and arch[len(prefix):][:3] in ("Mod", "For"))):
        return EXPORT_CLASSES[(family, False)], family, "none"
    reads = ", ".join(IMPORT_CLASSES)
    also = "" if mlm_head else "; fine-tuning also reads the encoder of any Bert*, Roberta*, Albert* or DistilBert* class"
    raise UserError(f"Hugging Face model is a {arch or family} ({family}); import reads {reads}{also}")


def model_config_from_hf(config, mlm_head: bool = True) -> Tuple[Any, str]:
    """``(ModelConfig, sentence objective)`` equivalent to a transformers config whose class
    ``import_class(config, mlm_head)`` accepts. Raises UserError otherwise."""
    from pretrain.config import ModelConfig

    arch, family, sentence = import_class(config, mlm_head)
    if config.model_type != family:
        raise UserError(f"config.json says model_type={config.model_type} but architectures={arch}")
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise UserError(f"position_embedding_type={config.position_embedding_type} is not supported; only absolute positions")
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise UserError("decoder / cross-attention configurations are not BERT-family encoders")
    if family == "distilbert":
        return _distilbert_config(config), "none"
    act = _ACT_FROM_HF.get(config.hidden_act)
    if act is None:
        raise UserError(f"hidden_act={config.hidden_act!r} is not one of: {', '.join(_ACT_FROM_HF)}")
    d = dict(
        family=family,
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size,
        hidden_act=act,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        layer_norm_eps=config.layer_norm_eps,
        initializer_range=config.initializer_range,
    )
    if family == "roberta":
        d["position_offset"] = config.pad_token_id + 1
    if family == "albert":
        if config.inner_group_num != 1:
            raise UserError(f"ALBERT inner_group_num={config.inner_group_num} is not supported (only 1 layer per group)")
        if config.num_hidden_groups == config.num_hidden_layers:
            d["sharing"] = "none"
        elif config.num_hidden_groups == 1:
            d["sharing"] = "all"
        else:
            raise UserError(f"ALBERT num_hidden_groups={config.num_hidden_groups} is neither 1 (all shared) nor num_hidden_layers")
        d["embedding_size"] = config.embedding_size
    sentence = getattr(config, SENTENCE_KEY, sentence) if sentence != "none" else "none"
    cfg = merge_into(ModelConfig, d, where="Hugging Face config")
    check_model_config(cfg)
    return cfg, sentence


def _distilbert_config(config):
    """ModelConfig of a transformers ``DistilBertConfig`` (its own key names: ``dim``,
    ``n_layers``, ``n_heads``, ``hidden_dim``, ``activation``, ``dropout``; LayerNorm eps
    fixed at 1e-12 in ``modeling_distilbert``; no token types). Raises UserError for
    sinusoidal position embeddings, which this encoder does not have."""
    from pretrain.config import ModelConfig

    if getattr(config, "sinusoidal_pos_embds", False):
        raise UserError("DistilBERT with sinusoidal_pos_embds=true is not supported; only learned absolute positions")
    act = _ACT_FROM_HF.get(config.activation)
    if act is None:
        raise UserError(f"activation={config.activation!r} is not one of: {', '.join(_ACT_FROM_HF)}")
    d = dict(family="distilbert", vocab_size=config.vocab_size, hidden_size=config.dim, num_hidden_layers=config.n_layers,
             num_attention_heads=config.n_heads, intermediate_size=config.hidden_dim,
             max_position_embeddings=config.max_position_embeddings, type_vocab_size=0, hidden_act=act,
             hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.attention_dropout,
             layer_norm_eps=1e-12, initializer_range=config.initializer_range)
    cfg = merge_into(ModelConfig, d, where="Hugging Face config")
    check_model_config(cfg)
    return cfg


def from_hf(directory: str | Path, mlm_head: bool = True) -> Tuple[Any, BertForPretraining]:
    """Our model initialised from a Hugging Face checkpoint directory (e.g. a distillation
    teacher), in eval mode. ``mlm_head=False`` (fine-tuning) also reads a directory of a class
    without the masked-LM head (``BertModel``, ``*ForSequenceClassification`` ...,
    ``import_class``): its encoder is loaded and the head keeps transformers' initialisation
    (no task here reads it).

    Returns:
        ``(ModelConfig, model)``; ``model.sentence`` is nsp for BertForPreTraining, sop for
        AlbertForPreTraining (or what ``sentence_objective`` in config.json says), none for
        the MaskedLM classes (DistilBertForMaskedLM included: ``model.family`` distilbert,
        no token-type embedding).
    Raises:
        UserError: not a model directory, weights that are not only tensors (a pickled
            ``.bin`` naming code: ``safeload.UnsafeCheckpoint``, nothing of it run), another
            architecture, a layout ours cannot hold
            (ALBERT with E = H and a non-identity projection, grouped layers, ...), missing
            weights, or a weights file that does not load (truncated, half copied).
    """
    tf = _transformers()
    d = Path(directory)
    if not (d / "config.json").is_file():
        raise UserError(f"{d} is not a Hugging Face model directory (no config.json)")
    try:
        config = tf.AutoConfig.from_pretrained(d)
    except Exception as e:  # anything transformers refuses in the file (bad JSON, a value of the wrong type ...)
        # one line, the field and its reason: huggingface_hub's validation puts them on two
        why = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"cannot read {d / 'config.json'}: {why}; restore the model directory's config.json") from None
    cfg, sentence = model_config_from_hf(config, mlm_head)
    arch = import_class(config, mlm_head)[0]
    from pretrain.training.safeload import tensors_only

    from safetensors import SafetensorError

    if not any((d / f).is_file() for f in WEIGHT_FILES):
        raise UserError(f"{d} has no weights file ({' or '.join(WEIGHT_FILES)}); copy the model's weights into it "
                        "(or export the checkpoint again)")
    # Weights-only: a pytorch_model.bin is a pickle and may hold code (safetensors cannot).
    try:
        with tensors_only(what=d):
            hf_model, info = getattr(tf, arch).from_pretrained(d, output_loading_info=True, weights_only=True)
    except UserError:
        raise
    except (OSError, RuntimeError, EOFError, ValueError, SafetensorError) as e:
        # torch's, safetensors' or transformers' own words, one line, and which of the two it is
        why = _first_line(e)
        if "mismatch" in why.lower():
            raise UserError(f"the weights in {d} do not fit the shapes its config.json gives ({why}); restore the "
                            "config.json that came with them (or export the checkpoint again)") from None
        raise UserError(f"cannot load the weights in {d} ({why}); the file is damaged: copy it again "
                        "(or export the checkpoint again)") from None
    # The decoder is tied to the word embeddings (DistilBERT's ``vocab_projector``).
    absent = [k for k in info.get("missing_keys", ()) if not k.endswith(("decoder.weight", "decoder.bias", "vocab_projector.weight"))]
    model = build_model(cfg, sentence)
    names = hf_names(cfg, list(model.state_dict()))
    if arch != (getattr(config, "architectures", None) or [None])[0]:  # headless: only the encoder must be there
        encoder = {v for k, v in names.items() if k.startswith("encoder.")}
        absent = [k for k in absent if k in encoder]
    if absent:
        raise UserError(f"{d} lacks weights its {arch} needs, e.g. {sorted(absent)[:3]}")
    hf_sd = hf_model.state_dict()
    if cfg.family == "albert" and embedding_size(cfg) == cfg.hidden_size:
        w = hf_sd["albert.encoder.embedding_hidden_mapping_in.weight"].float()
        b = hf_sd["albert.encoder.embedding_hidden_mapping_in.bias"].float()
        if not (torch.equal(w, torch.eye(cfg.hidden_size)) and not b.any()):
            raise UserError(f"{d}: ALBERT with embedding_size = hidden_size has a learned projection this model omits when E = H")
    model.load_state_dict({k: hf_sd[v].float() for k, v in names.items()})
    return cfg, model.eval()


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__
