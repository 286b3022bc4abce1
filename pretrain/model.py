"""BERT-style Transformer encoder with a tied masked-LM head.

Post-LN blocks as in BERT and RoBERTa (Devlin et al. 2019, §3; Vaswani et al. 2017),
learned absolute position embeddings, attention through
``torch.nn.functional.scaled_dot_product_attention`` with a padding mask. The MLM head is
BERT's (dense → GELU → LayerNorm → decoder tied to the word embeddings + bias) and computes
logits only at positions with a label, which for 15% masking is ~7x less work and memory
than full-vocabulary logits at every position.

Parameter names follow Hugging Face's ``BertForPreTraining`` so weights map one to one.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from data_prep.errors import UserError
from data_prep.masking import IGNORE_INDEX


def check_model_config(cfg) -> None:
    """Raise UserError for shapes the encoder cannot build (checked before any step)."""
    if cfg.vocab_size is None or cfg.vocab_size <= 0:
        raise UserError("model.vocab_size is not set (it is taken from the tokenizer when training)")
    if cfg.hidden_size % cfg.num_attention_heads:
        raise UserError(
            f"model.hidden_size={cfg.hidden_size} is not divisible by model.num_attention_heads={cfg.num_attention_heads}"
        )
    if cfg.hidden_act not in ("gelu", "gelu_new", "relu"):
        raise UserError(f"model.hidden_act={cfg.hidden_act!r} is not one of: gelu, gelu_new, relu")


def _act(name: str):
    if name == "gelu":
        return F.gelu  # erf form, as BERT's reference code
    if name == "gelu_new":
        return lambda x: F.gelu(x, approximate="tanh")
    return F.relu


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout.

    Input ``input_ids``/``token_type_ids`` int64 ``[batch, seq]`` → float ``[batch, seq, H]``.
    """

    def __init__(self, cfg) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        pos = torch.arange(seq, device=input_ids.device).unsqueeze(0)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention + output projection, residual and post-LayerNorm.

    ``x`` float ``[batch, seq, H]``, ``attn_mask`` bool ``[batch, 1, 1, seq]`` (True = attend).
    """

    def __init__(self, cfg) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.dense = nn.Linear(h, h)
        self.LayerNorm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.attn_dropout = cfg.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.num_heads, h // self.num_heads).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(
            heads(self.query(x)),
            heads(self.key(x)),
            heads(self.value(x)),
            attn_mask=attn_mask,
            dropout_p=self.attn_dropout if self.training else 0.0,
        )
        ctx = ctx.transpose(1, 2).reshape(b, t, h)
        return self.LayerNorm(x + self.dropout(self.dense(ctx)))


class FeedForward(nn.Module):
    """Position-wise H → intermediate → H with activation, residual and post-LayerNorm."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.intermediate = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.act = _act(cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(x + self.dropout(self.output(self.act(self.intermediate(x)))))


class Layer(nn.Module):
    """One encoder block: self-attention then feed-forward."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.attention = SelfAttention(cfg)
        self.ffn = FeedForward(cfg)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.attention(x, attn_mask))


class Encoder(nn.Module):
    """Embeddings and ``num_hidden_layers`` blocks.

    forward(input_ids int64 ``[batch, seq]``, attention_mask ``[batch, seq]`` (1 = token,
    0 = padding), token_type_ids int64 ``[batch, seq]`` or None) → float ``[batch, seq, H]``.
    """

    def __init__(self, cfg) -> None:
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        attn_mask = attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, attn_mask)
        return x


class MLMHead(nn.Module):
    """BERT's MLM transform; the decoder weight is the word-embedding matrix (tied)."""

    def __init__(self, cfg, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.act = _act(cfg.hidden_act)
        self.word_embeddings = word_embeddings
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` float ``[n, H]`` → logits ``[n, vocab]``."""
        return F.linear(self.LayerNorm(self.act(self.dense(h))), self.word_embeddings.weight, self.bias)


class BertForPretraining(nn.Module):
    """Encoder + tied MLM head.

    forward(input_ids, attention_mask, token_type_ids=None, labels=None) with int64
    ``[batch, seq]`` tensors (labels -100 where nothing is predicted) returns a dict:
    ``loss`` (mean cross-entropy over labelled positions, float scalar), ``mlm_loss``
    (same), ``mlm_correct`` and ``mlm_count`` (int64 scalars: argmax hits and labelled
    positions), and ``mlm_logits`` float ``[n_labelled, vocab]``.
    """

    def __init__(self, cfg) -> None:
        super().__init__()
        check_model_config(cfg)
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.mlm = MLMHead(cfg, self.encoder.embeddings.word_embeddings)
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        # BERT's init: N(0, initializer_range) weights, zero biases, unit LayerNorm.
        std = self.config.initializer_range
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        h = self.encoder(input_ids, attention_mask, token_type_ids)
        out: Dict[str, torch.Tensor] = {"hidden_states": h}
        if labels is not None:
            sel = labels != IGNORE_INDEX
            target = labels[sel]
            logits = self.mlm(h[sel])
            loss = F.cross_entropy(logits.float(), target)
            out.update(
                loss=loss,
                mlm_loss=loss.detach(),
                mlm_correct=(logits.argmax(-1) == target).sum(),
                mlm_count=torch.tensor(target.numel(), device=h.device),
                mlm_logits=logits,
            )
        return out

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights once); ``non_embedding`` drops word and position
        embeddings, the N of the 6N FLOPs-per-token estimate."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            e = self.encoder.embeddings
            n -= e.word_embeddings.weight.numel() + e.position_embeddings.weight.numel()
        return n


def flops_per_token(model: BertForPretraining, seq_len: int) -> float:
    """Training FLOPs per token: 6N + 12·L·H·T (Kaplan et al. 2020; PaLM appendix B)."""
    c = model.config
    return 6.0 * model.num_parameters(non_embedding=True) + 12.0 * c.num_hidden_layers * c.hidden_size * seq_len




def build_model(model_cfg, sentence: str = "none") -> BertForPretraining:
    """The pretraining model for ``model_cfg`` (a ModelConfig with vocab_size set) and the
    sentence objective ``sentence`` (``none`` | ``nsp`` | ``sop``). Raises UserError for
    shapes or objectives it cannot build."""
    if sentence != "none":
        raise UserError(f"objective.sentence={sentence!r} is not supported by this model yet; use none")
    return BertForPretraining(model_cfg)
