"""``pretrain describe``: layers, sizes and parameter counts of a model config.

Counts come from the module itself, built on the ``meta`` device (shapes without memory),
so they are what training allocates: tied weights (MLM decoder = word embeddings) and
shared blocks (ALBERT) count once. The sentence head is counted with the objective each
family was published with (``PAPER_OBJECTIVE``) unless another one is asked for.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from common.configfile import merge_into, parse_overrides, read_yaml
from common.errors import UserError
from pretrain.config import ModelConfig
from pretrain.models.encoder import (
    BertForPretraining,
    build_model,
    embedding_size,
    flops_per_token,
)

# The sentence objective each family's paper trains with: BERT §3.1 (NSP), RoBERTa §4.2
# (none), ALBERT §3.1 (SOP). Used only to pick which head describe and the tables count.
PAPER_OBJECTIVE = {"bert": "nsp", "roberta": "none", "albert": "sop", "distilbert": "none"}  # DistilBERT: no NSP (Sanh et al. §3)

# Published sizes, printed next to ours (the papers round).
PAPER_PARAMETERS: Dict[str, Tuple[str, str]] = {
    "bert-base": ("110M", "Devlin et al. 2019, §3 (ALBERT Table 1: 108M)"),
    "bert-large": ("340M", "Devlin et al. 2019, §3 (ALBERT Table 1: 334M)"),
    "roberta-base": ("125M", "Liu et al. 2019, fairseq release"),
    "albert-base": ("12M", "Lan et al. 2020, Table 1"),
    "albert-large": ("18M", "Lan et al. 2020, Table 1"),
    "albert-xlarge": ("60M", "Lan et al. 2020, Table 1"),
    "albert-xxlarge": ("235M", "Lan et al. 2020, Table 1"),
}

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def model_presets_dir() -> Path:
    """``./configs/model`` if it exists, else the repository's."""
    local = Path("configs") / "model"
    return local if local.is_dir() else REPO_CONFIGS / "model"


def preset_names() -> List[str]:
    """Names of the YAML files in ``model_presets_dir()``, sorted."""
    return sorted(p.stem for p in model_presets_dir().glob("*.yaml"))


def resolve_model(model: str) -> Path:
    """A preset name (``albert-base``) or a YAML path → the file. Raises UserError."""
    p = Path(model)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise UserError(f"model config not found: {p}")
        return p
    f = model_presets_dir() / f"{model}.yaml"
    if not f.is_file():
        raise UserError(f"unknown model preset {model!r}; available: {', '.join(preset_names()) or 'none'}")
    return f


def load_model_config(model: str, overrides: Sequence[str] = ()):
    """ModelConfig of a preset name or configs/model YAML path plus ``key=value``
    overrides (keys of ModelConfig, e.g. ``sharing=attention``). Raises UserError."""
    path = resolve_model(model)
    cfg = merge_into(ModelConfig, read_yaml(path), parse_overrides(overrides), where=str(path))
    if cfg.vocab_size is None:
        raise UserError(f"{path} sets no vocab_size; pass vocab_size=N to count its parameters")
    return cfg


def meta_model(cfg, sentence: str) -> BertForPretraining:
    """``build_model(cfg, sentence)`` on the meta device: shapes only, no memory."""
    with torch.device("meta"):
        return build_model(cfg, sentence)


def parameter_groups(model: BertForPretraining) -> "OrderedDict[str, int]":
    """Parameter count per part, each tensor once; the parts sum to
    ``model.num_parameters()``."""
    parts = OrderedDict(
        [
            ("embeddings", "encoder.embeddings."),
            ("embedding projection", "encoder.embeddings.projection."),
            ("attention blocks", "encoder.attention."),
            ("feed-forward blocks", "encoder.ffn."),
            ("final LayerNorm", "encoder.final_layer_norm."),
            ("MLM head", "mlm."),
            ("sentence head", "sentence_head."),
        ]
    )
    counts: "OrderedDict[str, int]" = OrderedDict((k, 0) for k in parts)
    for name, p in model.named_parameters():
        # The longest matching prefix wins, so the projection is not counted as embeddings.
        part = max((k for k, pre in parts.items() if name.startswith(pre)), key=lambda k: len(parts[k]))
        counts[part] += p.numel()
    return counts


def objective_for(cfg, sentence: Optional[str]) -> str:
    """``sentence`` if given, else the family's published objective."""
    return sentence if sentence is not None else PAPER_OBJECTIVE[cfg.family]


def describe_text(cfg, sentence: Optional[str] = None, name: str = "") -> str:
    """Multi-line description: shape, sharing, and parameter counts per part."""
    obj = objective_for(cfg, sentence)
    model = meta_model(cfg, obj)
    e = embedding_size(cfg)
    enc = model.encoder
    seq = cfg.max_position_embeddings - cfg.position_offset
    lines = [
        f"{name}  family {cfg.family}, objective {obj}, {'pre' if cfg.pre_ln else 'post'}-LN, sharing {cfg.sharing}",
        f"  layers {cfg.num_hidden_layers}, hidden {cfg.hidden_size}, heads {cfg.num_attention_heads} x "
        f"{cfg.hidden_size // cfg.num_attention_heads}, feed-forward {cfg.intermediate_size}, "
        f"embedding {e}{f' (projected to {cfg.hidden_size})' if e != cfg.hidden_size else ''}, vocab {cfg.vocab_size}, "
        f"positions {cfg.max_position_embeddings}{f' (offset {cfg.position_offset})' if cfg.position_offset else ''}, "
        f"token types {cfg.type_vocab_size}, {cfg.hidden_act}, dropout {cfg.hidden_dropout_prob}/{cfg.attention_probs_dropout_prob}",
        "  parameters (tied and shared weights once):",
    ]
    uses = {"attention blocks": len(enc.attention), "feed-forward blocks": len(enc.ffn)}
    for part, n in parameter_groups(model).items():
        if n == 0:
            continue
        note = f"  ({uses[part]} block(s) for {cfg.num_hidden_layers} layers)" if part in uses else ""
        lines.append(f"    {part:<22}{n:>15,}{note}")
    total = model.num_parameters()
    paper = PAPER_PARAMETERS.get(name)
    lines.append(f"    {'total':<22}{total:>15,}  = {_short(total)}" + (f"  (paper: {paper[0]}, {paper[1]})" if paper else ""))
    lines.append(f"    {'non-embedding':<22}{model.num_parameters(non_embedding=True):>15,}")
    lines.append(f"  training FLOPs per token at {seq} tokens: {flops_per_token(model, seq):.3g}")
    return "\n".join(lines)


def markdown_table(models: Sequence[Tuple[str, object]], sentence: Optional[str] = None) -> str:
    """A markdown table, one row per ``(name, ModelConfig)``."""
    head = "| Preset | Family | L | H | A | FFN | E | Sharing | Vocab | Positions | Sentence head | Parameters | Paper |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, cfg in models:
        obj = objective_for(cfg, sentence)
        n = meta_model(cfg, obj).num_parameters()
        paper = PAPER_PARAMETERS.get(name, ("—", ""))[0]
        pos = f"{cfg.max_position_embeddings}" + (f" (offset {cfg.position_offset})" if cfg.position_offset else "")
        rows.append(
            f"| {name} | {cfg.family} | {cfg.num_hidden_layers} | {cfg.hidden_size} | {cfg.num_attention_heads} | "
            f"{cfg.intermediate_size} | {embedding_size(cfg)} | {cfg.sharing} | {cfg.vocab_size} | {pos} | {obj} | "
            f"{n:,} ({_short(n)}) | {paper} |"
        )
    return "\n".join(rows)


def describe(model: Optional[str], overrides: Sequence[str] = (), sentence: Optional[str] = None, all_presets: bool = False, markdown: bool = False) -> str:
    """What ``pretrain describe`` prints. Raises UserError for an unknown preset or file,
    bad overrides, or neither ``model`` nor ``all_presets``."""
    if all_presets:
        if model is not None or overrides:
            raise UserError("pass either MODEL [key=value ...] or --all, not both")
        models = [(n, load_model_config(n)) for n in preset_names()]
    elif model is None:
        raise UserError("name a model (preset or configs/model YAML) or pass --all")
    else:
        name = Path(model).stem if Path(model).suffix in (".yaml", ".yml") else model
        models = [(name if not overrides else f"{name} {' '.join(overrides)}", load_model_config(model, overrides))]
    if markdown:
        return markdown_table(models, sentence)
    return "\n\n".join(describe_text(cfg, sentence, name) for name, cfg in models)


def _short(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"
