"""Export an ELECTRA run (``pretrain.models.electra.ElectraForPretraining``) as two Hugging
Face model directories: ``OUT/discriminator`` (``ElectraForPreTraining``: the model to
fine-tune, Clark et al. 2020 §2 "we throw out the generator and fine-tune the
discriminator") and ``OUT/generator`` (``ElectraForMaskedLM``), as google/electra-*-
discriminator and -generator are published. Both hold the shared embedding tables.

Weights map one to one (``electra_hf_names``); our blocks follow BERT's layout, which is
Hugging Face's ``ElectraLayer``. Refused before anything is written (one-line UserError):
pre-LN or shared layers (no ELECTRA class has them), a position offset, and an activation
other than erf GELU (``ElectraGeneratorPredictions`` always applies ``gelu``).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from common.errors import UserError
from pretrain.models.electra import ElectraForPretraining
from pretrain.models.encoder import embedding_size

PARTS = ("discriminator", "generator")
CLASSES = {"discriminator": "ElectraForPreTraining", "generator": "ElectraForMaskedLM"}

_BLOCKS = [
    (r"attention\.(\d+)\.(query|key|value)\.(\w+)", "electra.encoder.layer.{0}.attention.self.{1}.{2}"),
    (r"attention\.(\d+)\.(dense|LayerNorm)\.(\w+)", "electra.encoder.layer.{0}.attention.output.{1}.{2}"),
    (r"ffn\.(\d+)\.intermediate\.(\w+)", "electra.encoder.layer.{0}.intermediate.dense.{1}"),
    (r"ffn\.(\d+)\.output\.(\w+)", "electra.encoder.layer.{0}.output.dense.{1}"),
    (r"ffn\.(\d+)\.LayerNorm\.(\w+)", "electra.encoder.layer.{0}.output.LayerNorm.{1}"),
]
_SHARED = (r"discriminator\.embeddings\.(word_embeddings|position_embeddings|token_type_embeddings|LayerNorm)\.(\w+)",
           "electra.embeddings.{0}.{1}")
# Our parameter names → Hugging Face's, per exported part; parameters of the other part are skipped.
_RULES: Dict[str, List[Tuple[str, str]]] = {
    "discriminator": [_SHARED, (r"discriminator\.embeddings\.projection\.(\w+)", "electra.embeddings_project.{0}")]
    + [(r"discriminator\." + p, t) for p, t in _BLOCKS]
    + [(r"discriminator_head\.(dense|dense_prediction)\.(\w+)", "discriminator_predictions.{0}.{1}")],
    "generator": [_SHARED, (r"generator_projection\.(\w+)", "electra.embeddings_project.{0}")]
    + [(r"generator\." + p, t) for p, t in _BLOCKS]
    + [(r"generator_head\.(dense|LayerNorm)\.(\w+)", "generator_predictions.{0}.{1}"),
       (r"generator_head\.bias", "generator_lm_head.bias")],
}


def check_electra_exportable(cfg) -> None:
    """Raise UserError (one line) for a discriminator ModelConfig ``cfg`` no Hugging Face
    ELECTRA class holds."""
    if cfg.pre_ln:
        raise UserError("no Hugging Face ELECTRA class holds a pre-LN encoder (model.pre_ln=true)")
    if cfg.sharing != "none":
        raise UserError(f"no Hugging Face ELECTRA class shares layers (model.sharing={cfg.sharing})")
    if cfg.position_offset != 0:
        raise UserError(f"ELECTRA has no position offset; model.position_offset={cfg.position_offset} cannot be exported")
    if cfg.hidden_act != "gelu":
        raise UserError(f"ElectraForMaskedLM's generator head always applies erf GELU; model.hidden_act={cfg.hidden_act} "
                        "cannot be exported as ELECTRA")


def electra_hf_names(part: str, keys: List[str]) -> Dict[str, str]:
    """Our state-dict ``keys`` that belong to ``part`` (discriminator | generator) → their
    Hugging Face names; keys of the other part are left out."""
    out = {}
    for k in keys:
        for pattern, template in _RULES[part]:
            m = re.fullmatch(pattern, k)
            if m:
                out[k] = template.format(*m.groups())
                break
    return out


def electra_hf_config(cfg, part: str, generator_cfg=None, pad_token_id: Optional[int] = None):
    """A ``transformers.ElectraConfig`` for the discriminator (``cfg``) or the generator
    (``generator_cfg``, hidden sizes of its own, the discriminator's E), with
    ``architectures`` set."""
    from pretrain.models.hf import _transformers, encoder_config_kwargs

    tf = _transformers()
    c = cfg if part == "discriminator" else generator_cfg
    kw = dict(encoder_config_kwargs(cfg, c), embedding_size=embedding_size(cfg))
    if pad_token_id is not None:
        kw["pad_token_id"] = pad_token_id
    config = tf.ElectraConfig(**kw)
    config.architectures = [CLASSES[part]]
    return config


def export_electra(cfg, electra_cfg, state_dict: Dict[str, torch.Tensor], out: str | Path,
                   tokenizer: Optional[Tuple[str | Path, str]] = None) -> Path:
    """Write ``out/discriminator`` (ElectraForPreTraining) and ``out/generator``
    (ElectraForMaskedLM): config.json, model.safetensors and, given ``tokenizer``
    (``(tokenizer.json, kind)``), the tokenizer files in each.

    Args:
        cfg: the discriminator's ModelConfig (vocab_size set); electra_cfg: the run's
            ``electra``.
        state_dict: ``ElectraForPretraining(cfg, electra_cfg).state_dict()``-shaped tensors.
    Returns:
        ``out`` as a Path.
    Raises:
        UserError: a layout no ELECTRA class holds (``check_electra_exportable``), weights
            that do not fit the config, or a tokenizer larger than the vocabulary.
    """
    from pretrain.models.hf import _first_line, _transformers, _wrap_tokenizer

    tf = _transformers()
    check_electra_exportable(cfg)
    ours = ElectraForPretraining(cfg, electra_cfg)
    try:
        ours.load_state_dict(state_dict)
    except RuntimeError as e:
        raise UserError(f"weights do not fit the ELECTRA config ({_first_line(e)}); was the checkpoint trained with "
                        "another architecture?") from None
    tok = _wrap_tokenizer(cfg, tokenizer) if tokenizer is not None else None
    sd = ours.state_dict()
    out = Path(out)
    # Both parts are written beside OUT first, then moved in: no half-written export.
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    for part in PARTS:
        config = electra_hf_config(cfg, part, ours.generator_config, tok.pad_token_id if tok is not None else None)
        model = getattr(tf, CLASSES[part])(config).eval()
        names = electra_hf_names(part, list(sd))
        missing, unexpected = model.load_state_dict({v: sd[k] for k, v in names.items()}, strict=False)
        untied = [k for k in missing if k != "generator_lm_head.weight"]  # tied to the word embeddings
        if untied or unexpected:
            raise UserError(f"{CLASSES[part]} does not take these weights (missing {untied[:3]}, unexpected {unexpected[:3]})")
        model.tie_weights()
        d = tmp / part
        d.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(d, safe_serialization=True)
        if tok is not None:
            tok.save_pretrained(d)
    out.mkdir(parents=True, exist_ok=True)
    for part in PARTS:
        shutil.rmtree(out / part, ignore_errors=True)
        (tmp / part).rename(out / part)
    tmp.rmdir()
    return out


def encoder_from_hf_electra(directory: str | Path) -> Tuple[Any, Any]:
    """The encoder of a Hugging Face ELECTRA directory (google/electra-*-discriminator as
    published, our export's ``discriminator``, or any other ``Electra*`` class) as a
    ``BertForPretraining`` of family bert: what ELECTRA fine-tunes (Clark et al. 2020 §2).
    Its MLM head keeps our initialisation (no fine-tuning task reads it) and it has no
    sentence head; E < H keeps the E→H ``embeddings_project`` as our ``projection``.

    Returns:
        ``(ModelConfig, model)``, CPU fp32, eval mode.
    Raises:
        UserError: a class that is not ELECTRA's, a layout ours cannot hold (relative
            positions, a decoder), no weights file, or weights that are damaged, pickled
            with code, or lack part of the encoder.
    """
    from safetensors import SafetensorError

    from common.configfile import merge_into
    from pretrain.config import ModelConfig
    from pretrain.models.encoder import build_model
    from pretrain.models.hf import _ACT_FROM_HF, WEIGHT_FILES, _first_line, _transformers
    from pretrain.training.safeload import tensors_only

    tf, d = _transformers(), Path(directory)
    config = tf.AutoConfig.from_pretrained(d)
    arch = (getattr(config, "architectures", None) or ["ElectraModel"])[0]
    if config.model_type != "electra" or not arch.startswith("Electra"):
        raise UserError(f"{d}: config.json names {arch} ({config.model_type}), not an ELECTRA class")
    if getattr(config, "position_embedding_type", "absolute") != "absolute" or getattr(config, "is_decoder", False):
        raise UserError(f"{d}: only ELECTRA encoders with absolute positions are read")
    act = _ACT_FROM_HF.get(config.hidden_act)
    if act is None:
        raise UserError(f"{d}: hidden_act={config.hidden_act!r} is not one of: {', '.join(_ACT_FROM_HF)}")
    e = config.embedding_size
    cfg = merge_into(ModelConfig, dict(
        family="bert", vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size, max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size, hidden_act=act, hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob, layer_norm_eps=config.layer_norm_eps,
        initializer_range=config.initializer_range, embedding_size=None if e == config.hidden_size else e,
    ), where=f"{d / 'config.json'}")
    if not any((d / f).is_file() for f in WEIGHT_FILES):
        raise UserError(f"{d} has no weights file ({' or '.join(WEIGHT_FILES)}); copy the model's weights into it")
    try:
        with tensors_only(what=d):
            hf, info = tf.ElectraModel.from_pretrained(d, output_loading_info=True, weights_only=True)
    except UserError:
        raise
    except (OSError, RuntimeError, EOFError, ValueError, SafetensorError) as err:
        raise UserError(f"cannot load the weights in {d} ({_first_line(err)}); copy them again") from None
    if info.get("missing_keys"):
        raise UserError(f"{d} lacks encoder weights, e.g. {sorted(info['missing_keys'])[:3]}")
    theirs = {"electra." + k: v for k, v in hf.state_dict().items()}
    model = build_model(cfg, "none")
    ours = {"discriminator." + k[len("encoder."):]: k for k in model.state_dict() if k.startswith("encoder.")}
    names = electra_hf_names("discriminator", list(ours))
    missing, _ = model.load_state_dict({ours[k]: theirs[v].float() for k, v in names.items()}, strict=False)
    if any(k.startswith("encoder.") for k in missing):
        raise UserError(f"{d}: no ELECTRA weight for {sorted(k for k in missing if k.startswith('encoder.'))[:3]}")
    return cfg, model.eval()
