"""The pretrained model an evaluation starts from: one of our checkpoints or a Hugging Face
BERT / RoBERTa / ALBERT directory, with the tokenizer it was trained with.

- A run directory, its ``checkpoints/`` or one ``checkpoints/step-*`` directory: weights by
  ``pretrain.training.checkpoint.load_model_state`` (fp32 master weights), tokenizer by
  ``pretrain.models.hf.find_run_tokenizer`` (the run's shard directory).
  An ELECTRA run gives its discriminator's encoder (``discriminator_encoder_state``).
- A directory with ``config.json``: ``pretrain.models.hf.from_hf`` and the directory's
  tokenizer (``pretrain.downstream.encode.tokenizer_for_hf_dir``). Our own export of a
  checkpoint loads to the same weights, so both give the same scores.

``random_init`` keeps the shape and tokenizer but not the weights: the control row of an
evaluation table (what pretraining bought at this scale).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from common.errors import UserError
from data_prep.tokenizer import TokenizerInfo, load_tokenizer
from pretrain.models.encoder import BertForPretraining, build_model


@dataclass
class Pretrained:
    """A loaded pretrained model. ``model_cfg``: its ``ModelConfig``; ``sentence``: the
    objective its sentence head was trained for (none | nsp | sop); ``model``: CPU fp32, eval
    mode; ``tokenizer``; ``where``: the path given; ``random_init``: weights not loaded;
    ``pooler``: ``{"weight" [H, H], "bias" [H]}`` of a pretrained pooler the model class does
    not hold (``hf_pooler``), else None."""

    model_cfg: Any
    sentence: str
    model: Optional[BertForPretraining]  # None once a fine-tuning task has copied it
    tokenizer: TokenizerInfo
    where: str
    random_init: bool = False
    pooler: Optional[Dict[str, torch.Tensor]] = None


def is_hf_dir(path: Path) -> bool:
    """True for a Hugging Face model directory (it has config.json)."""
    return (Path(path) / "config.json").is_file()


def hf_family(directory: str | Path) -> str:
    """The ``model_type`` of a Hugging Face directory's config.json, read without
    transformers (it picks the recipe and job directory before anything loads).

    Raises:
        UserError: config.json that is not a JSON object, has no ``model_type``, or names a
            family other than those evaluation reads (``FAMILY_TOKENIZER``: bert, roberta,
            albert, distilbert, electra).
    """
    from pretrain.downstream.encode import FAMILY_TOKENIZER

    f = Path(directory) / "config.json"
    try:
        config = json.loads(f.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise UserError(f"{f} is not valid JSON ({e}); restore the model directory's config.json "
                        "(or export the checkpoint again)") from None
    family = config.get("model_type") if isinstance(config, dict) else None
    if family not in FAMILY_TOKENIZER:
        said = f"model_type {family!r}" if family is not None else "no model_type"
        raise UserError(f"{f} has {said}; fine-tuning and the probes read Hugging Face "
                        f"{', '.join(FAMILY_TOKENIZER)} models")
    return family


def load_pretrained(path: str | Path, tokenizer: Optional[str | Path] = None, random_init: bool = False, seed: int = 0,
                    mlm_head: bool = True) -> Pretrained:
    """Load ``path`` (module docstring). ``tokenizer``: a tokenizer.json overriding the one
    found with the model. ``random_init``: build the same shape from BERT's initialisation
    (seeded by ``seed``) instead of loading weights. ``mlm_head=False`` (fine-tuning): a
    Hugging Face directory may be of a class without the masked-LM head (``BertModel``,
    ``RobertaForSequenceClassification`` ...: ``pretrain.models.hf.import_class``) or any
    ELECTRA class (its encoder: ``pretrain.models.hf_electra.encoder_from_hf_electra``).

    Raises:
        UserError: nothing loadable at ``path`` (no checkpoint, no config.json), a
            config.json ``hf_family`` refuses, weights that do not fit, or no tokenizer found.
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p} does not exist; pass a run directory, a checkpoint directory or a Hugging Face model directory")
    if tokenizer and not str(tokenizer).startswith("hf:") and not Path(tokenizer).is_file():
        # named by its flag: load_tokenizer's own message speaks of a run config's tokenizer.path
        raise UserError(f"--tokenizer {tokenizer}: no such file; pass the tokenizer.json the model was trained with")
    if is_hf_dir(p):
        from pretrain.downstream.encode import FAMILY_TOKENIZER, tokenizer_for_hf_dir
        from pretrain.models.hf import from_hf

        if hf_family(p) == "electra":  # a family evaluation reads, before transformers sees the directory
            if mlm_head:
                raise UserError(f"{p} is an ELECTRA model: its discriminator has no masked-LM head, which the probes "
                                "read; fine-tune it instead (pretrain finetune)")
            from pretrain.models.hf_electra import encoder_from_hf_electra

            model_cfg, model = encoder_from_hf_electra(p)
        else:
            model_cfg, model = from_hf(p, mlm_head)
        sentence = model.sentence
        info = load_tokenizer(tokenizer, FAMILY_TOKENIZER[model_cfg.family]) if tokenizer else tokenizer_for_hf_dir(p, model_cfg.family)
        state = model.state_dict()
        pooler = hf_pooler(p, model_cfg.family) if model.sentence_head is None else None
    else:
        from pretrain.models.hf import find_run_tokenizer
        from pretrain.training.checkpoint import load_model_state

        cfg, state = load_model_state(p)
        pooler = None
        model_cfg, sentence = cfg.model, cfg.objective.sentence
        tok_path = Path(tokenizer) if tokenizer else find_run_tokenizer(p, cfg)
        info = load_tokenizer(tok_path, cfg.data.tokenizer.kind)
    if info.vocab_size > model_cfg.vocab_size:
        raise UserError(f"tokenizer has {info.vocab_size} tokens, more than the model's vocab_size={model_cfg.vocab_size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(model_cfg, sentence).float()
    if not random_init:
        if not is_hf_dir(p) and cfg.task == "electra":
            # ELECTRA fine-tunes its discriminator (Clark et al. 2020 §2); the generator is dropped
            # and the MLM head, which no task here uses, keeps its initialisation.
            from pretrain.models.electra import discriminator_encoder_state

            missing, _ = model.load_state_dict(discriminator_encoder_state(state), strict=False)
            if any(not k.startswith("mlm.") for k in missing):
                raise UserError(f"{p}: the ELECTRA discriminator lacks encoder weights, e.g. {sorted(missing)[:3]}")
        else:
            model.load_state_dict(state)
    return Pretrained(model_cfg, sentence, model.eval(), info, str(p), random_init, None if random_init else pooler)


# Where BERT's and ALBERT's checkpoints keep the pretrained pooler (Linear H→H, tanh); a
# directory saved from the bare ``BertModel`` / ``AlbertModel`` has no ``bert.`` / ``albert.``.
POOLER_KEYS = {"bert": "bert.pooler.dense", "albert": "albert.pooler"}


def hf_pooler(directory: Path, family: str) -> Optional[Dict[str, torch.Tensor]]:
    """The pretrained pooler of a Hugging Face BERT/ALBERT directory whose class has none
    (``BertForMaskedLM``, ``AlbertForMaskedLM``: bert-base-uncased and albert-base-v2 name
    these classes but ship the pooler trained with NSP/SOP, which
    ``*ForSequenceClassification`` loads and fine-tunes from). Read from model.safetensors
    (or pytorch_model.bin with ``weights_only``); None when absent or for RoBERTa."""
    prefix = POOLER_KEYS.get(family)
    if prefix is None:
        return None
    choices = [{"weight": f"{p}.weight", "bias": f"{p}.bias"} for p in (prefix, prefix.split(".", 1)[1])]
    st, pt = Path(directory) / "model.safetensors", Path(directory) / "pytorch_model.bin"
    if st.is_file():
        from safetensors import safe_open

        with safe_open(str(st), framework="pt") as f:
            names = set(f.keys())
            keys = next((c for c in choices if all(k in names for k in c.values())), None)
            return None if keys is None else {n: f.get_tensor(k).float() for n, k in keys.items()}
    if pt.is_file():
        sd = torch.load(pt, map_location="cpu", weights_only=True)
        keys = next((c for c in choices if all(k in sd for k in c.values())), None)
        return None if keys is None else {n: sd[k].float() for n, k in keys.items()}
    return None
