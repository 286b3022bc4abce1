"""Fine-tuning heads on the pretrained encoder: sequence classification (and STS-B
regression, one output) and token classification (NER).

Sequence heads follow each family's published fine-tuning model, with Hugging Face's module
layout so a fine-tuned model maps name for name onto its ``*ForSequenceClassification``:

- BERT (Devlin et al. 2019, §4.1: "the final hidden vector C ∈ R^H corresponding to the
  first input token ([CLS]) ... classification layer weights W ∈ R^{K×H}"; C is the pooler
  output ``tanh(W_p h_[CLS] + b_p)`` in the reference ``modeling.py``): ``pooler`` (→
  ``bert.pooler.dense``), dropout, ``classifier``;
- ALBERT (same, reference ``run_classifier.py``): ``pooler`` (→ ``albert.pooler``), dropout,
  ``classifier``;
- RoBERTa (fairseq ``RobertaClassificationHead``): dropout, ``dense`` H→H, tanh, dropout,
  ``out_proj`` (→ ``classifier.dense``, ``classifier.out_proj``) on ``<s>``; no pretrained
  pooler exists, RoBERTa dropped NSP.

The pooler starts from the pretrained NSP/SOP pooler when the checkpoint has one (BERT and
ALBERT fine-tune from it, as their reference code does); the classifier always starts fresh
(truncated normal, std ``initializer_range``). Token classification (BERT §5.3): dropout,
then ``classifier`` H→K at every position (→ ``classifier``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from common.errors import UserError
from pretrain.models.encoder import (BertForPretraining, Encoder, check_model_config, count_applied_parameters,
                                     count_parameters)

HEADS = ("sequence", "token")


class SequenceHead(nn.Module):
    """Classification/regression on the first token (module docstring for the layouts).

    forward(hidden float ``[batch, seq, H]``) → logits float ``[batch, num_labels]``.
    """

    def __init__(self, cfg, num_labels: int, dropout: float) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.family = cfg.family
        self.dropout = nn.Dropout(dropout)
        if cfg.family == "roberta":
            self.dense = nn.Linear(h, h)
            self.out_proj = nn.Linear(h, num_labels)
        else:
            self.pooler = nn.Linear(h, h)
            self.classifier = nn.Linear(h, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden[:, 0]
        if self.family == "roberta":
            x = torch.tanh(self.dense(self.dropout(x)))
            return self.out_proj(self.dropout(x))
        return self.classifier(self.dropout(torch.tanh(self.pooler(x))))


class TokenHead(nn.Module):
    """Dropout then a linear classifier at every position.

    forward(hidden float ``[batch, seq, H]``) → logits float ``[batch, seq, num_labels]``.
    """

    def __init__(self, cfg, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(hidden))


class FineTuneModel(nn.Module):
    """Encoder + one fine-tuning head.

    Args:
        cfg: a ``pretrain.config.ModelConfig`` (vocab_size set).
        head: ``sequence`` (classification; regression with ``num_labels`` 1) or ``token``.
        num_labels: classifier outputs (>= 1).
        dropout: dropout before the classifier (0.1 in BERT §A.3, RoBERTa and ALBERT's
            fine-tuning code).

    forward(input_ids int64 ``[batch, seq]``, attention_mask ``[batch, seq]`` or None,
    token_type_ids int64 ``[batch, seq]`` or None) → logits float ``[batch, num_labels]``
    (sequence) or ``[batch, seq, num_labels]`` (token).

    Raises:
        UserError: an unknown head, ``num_labels`` < 1, or a config the encoder cannot build.
    """

    def __init__(self, cfg, head: str, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        if head not in HEADS:
            raise UserError(f"head {head!r} is not one of: {', '.join(HEADS)}")
        if num_labels < 1:
            raise UserError(f"num_labels={num_labels} must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"classifier dropout {dropout} must be in [0, 1)")
        check_model_config(cfg)
        self.config = cfg
        self.kind = head
        self.num_labels = num_labels
        self.encoder = Encoder(cfg)
        self.head = SequenceHead(cfg, num_labels, dropout) if head == "sequence" else TokenHead(cfg, num_labels, dropout)
        self.apply(self.init_module)

    def init_module(self, m: nn.Module) -> None:
        """BERT's initialisation, as ``BertForPretraining.init_module``."""
        BertForPretraining.init_module(self, m)  # reads only self.config.initializer_range

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``input_ids``, ``attention_mask``, ``token_type_ids``: ``[batch, seq]`` int64 (mask
        1 = real token; None = all real / all segment 0). Returns float logits ``[batch,
        num_labels]`` for the sequence head (``num_labels`` 1: the STS-B regression score) or
        ``[batch, seq, num_labels]`` for the token head."""
        return self.head(self.encoder(input_ids, attention_mask, token_type_ids))

    def load_pretrained(self, pretrained: BertForPretraining, pooler: Optional[dict] = None) -> "FineTuneModel":
        """Copy the encoder of ``pretrained`` (same ModelConfig) and, for a BERT/ALBERT
        sequence head, the pooler of its NSP/SOP head when it has one, else ``pooler``
        (``{"weight" [H, H], "bias" [H]}`` read from a checkpoint whose class has no head).
        Returns self. Raises UserError when the encoders' shapes differ."""
        try:
            self.encoder.load_state_dict(pretrained.encoder.state_dict())
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise UserError(f"pretrained encoder does not fit the fine-tuning model: {first}") from None
        sentence_head = getattr(pretrained, "sentence_head", None)
        if self.kind == "sequence" and hasattr(self.head, "pooler"):
            if sentence_head is not None:
                self.head.pooler.load_state_dict(sentence_head.pooler.state_dict())
            elif pooler is not None:
                self.head.pooler.load_state_dict(pooler)
        return self

    def num_parameters(self, non_embedding: bool = False) -> int:
        """``pretrain.models.encoder.count_parameters`` of this model."""
        return count_parameters(self, self.encoder, non_embedding)

    def applied_parameters(self) -> int:
        """``pretrain.models.encoder.count_applied_parameters`` of this model, for
        ``pretrain.models.encoder.flops_per_token``."""
        return count_applied_parameters(self, self.encoder)
