"""BERT-family Transformer encoder for pretraining: BERT, RoBERTa and ALBERT shapes.

One module covers the three papers' architectures through ``ModelConfig`` keys:

- post-LN blocks as in BERT and RoBERTa (Devlin et al. 2019, §3; Vaswani et al. 2017), or
  pre-LN (``pre_ln``, Xiong et al. 2020) with a final LayerNorm;
- learned absolute positions, optionally offset as in RoBERTa's released models
  (``position_offset``);
- a factorized embedding of size E with an E→H projection when E ≠ H (Lan et al. 2020,
  §3.1), and cross-layer sharing of all / attention / feed-forward parameters (§3.1,
  Table 4): a shared block is one module applied at every layer;
- the MLM head of BERT (dense → activation → LayerNorm → decoder tied to the word
  embeddings + bias); with E ≠ H the dense maps H→E, as ALBERT does;
- an optional NSP/SOP head (``SentenceHead``: BERT's pooler and a 2-way classifier).

The model returns hidden states and logits, never a loss: the criteria in
``pretrain.criterions`` turn logits into losses (fairseq's split). Given the MLM labels,
``forward`` decodes only the labelled positions (for 15% masking ~7x less work and memory
than full-vocabulary logits everywhere); without them, every position.
Attention goes through ``torch.nn.functional.scaled_dot_product_attention``.

Parameter names mirror Hugging Face's (``query``, ``LayerNorm``, ...) so ``pretrain.models.hf``
maps them one to one; a shared block appears once in the state dict.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError
from common.schema import IGNORE_INDEX, PAIR_FORMATS, SENTENCE_OBJECTIVES


def embedding_size(cfg) -> int:
    """E: ``cfg.embedding_size`` or H when unset."""
    return cfg.embedding_size if cfg.embedding_size is not None else cfg.hidden_size


def check_model_config(cfg) -> None:
    """Raise UserError (one line) for a ModelConfig the encoder cannot build; called by
    ``build_model`` before anything is allocated. The choice keys (family, sharing,
    hidden_act) are typed and checked when the config loads (``pretrain.config``)."""
    if cfg.vocab_size is None or cfg.vocab_size <= 0:
        raise UserError("model.vocab_size is not set (it is taken from the tokenizer when training)")
    if cfg.hidden_size <= 0 or cfg.num_attention_heads <= 0 or cfg.num_hidden_layers <= 0 or cfg.intermediate_size <= 0:
        raise UserError("model.hidden_size, num_hidden_layers, num_attention_heads and intermediate_size must be positive")
    if cfg.hidden_size % cfg.num_attention_heads:
        raise UserError(
            f"model.hidden_size={cfg.hidden_size} is not divisible by model.num_attention_heads={cfg.num_attention_heads}"
        )
    e = embedding_size(cfg)
    if e <= 0:
        raise UserError(f"model.embedding_size={e} must be positive")
    if e > cfg.hidden_size:
        # ALBERT's factorization exists to make E ≪ H (§3.1); E > H only adds parameters.
        raise UserError(f"model.embedding_size={e} is larger than model.hidden_size={cfg.hidden_size}; use E <= H")
    if cfg.type_vocab_size < 0:
        raise UserError(f"model.type_vocab_size={cfg.type_vocab_size} must be >= 0 (0 = no token-type embedding, as DistilBERT)")
    if not 0 <= cfg.position_offset < cfg.max_position_embeddings:
        raise UserError(
            f"model.position_offset={cfg.position_offset} must be in [0, max_position_embeddings={cfg.max_position_embeddings})"
        )
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise UserError(f"model.{key}={getattr(cfg, key)} must be in [0, 1)")


def check_model_fits_data(cfg, data_cfg) -> None:
    """Raise UserError if sequences of ``data_cfg`` (a DataConfig) do not fit the model:
    more positions than ``max_position_embeddings - position_offset``, or pair data with a
    single token type (segment B needs type 1). Meant for the trainer, before any step."""
    room = cfg.max_position_embeddings - cfg.position_offset
    if data_cfg.max_seq_length > room:
        raise UserError(
            f"data.max_seq_length={data_cfg.max_seq_length} exceeds the model's {room} positions "
            f"(max_position_embeddings={cfg.max_position_embeddings} - position_offset={cfg.position_offset})"
        )
    if data_cfg.format in PAIR_FORMATS and cfg.type_vocab_size < 2:
        raise UserError(
            f"data.format={data_cfg.format} has two segments but model.type_vocab_size={cfg.type_vocab_size}; use 2"
        )


def _act(name: str):
    if name == "gelu":
        return F.gelu  # erf form (Hugging Face's "gelu")
    if name == "gelu_new":
        # tanh approximation: what BERT's and ALBERT's TensorFlow code compute
        return lambda x: F.gelu(x, approximate="tanh")
    return F.relu


class Embeddings(nn.Module):
    """Word + position + token-type embeddings of size E, LayerNorm, dropout, then the
    E→H ``projection`` when E ≠ H (ALBERT §3.1). With ``type_vocab_size`` 0 there is no
    token-type embedding and ``token_type_ids`` are ignored (DistilBERT, Sanh et al. 2019 §3:
    "the token-type embeddings and the pooler are removed").

    forward(input_ids int64 ``[batch, seq]``, token_type_ids int64 ``[batch, seq]``,
    attention_mask ``[batch, seq]`` (1 = token)) → float ``[batch, seq, H]``.

    Positions: 0..seq-1 when ``position_offset`` is 0 (BERT, ALBERT). With an offset p
    (RoBERTa: 2) real tokens get p, p+1, ... counted over unmasked tokens and padding gets
    p-1, which is what Hugging Face's RoBERTa derives from ``input_ids != pad`` when the
    mask marks exactly the pad tokens; with right padding the real tokens' positions are
    the same as without padding.
    """

    def __init__(self, cfg) -> None:
        super().__init__()
        e = embedding_size(cfg)
        self.position_offset = cfg.position_offset
        self.word_embeddings = nn.Embedding(cfg.vocab_size, e)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, e)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, e) if cfg.type_vocab_size > 0 else None
        self.LayerNorm = nn.LayerNorm(e, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.projection = nn.Linear(e, cfg.hidden_size) if e != cfg.hidden_size else None

    def position_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """int64 ``[batch, seq]`` (or ``[1, seq]`` without an offset)."""
        if self.position_offset == 0:
            return torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        mask = attention_mask.long()
        return torch.cumsum(mask, dim=1) * mask + (self.position_offset - 1)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The size-E embedding before the projection: float ``[batch, seq, E]`` (what
        ELECTRA's generator shares with its discriminator, ``pretrain.models.electra``)."""
        pos = self.position_ids(input_ids, attention_mask)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos)
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids, token_type_ids, attention_mask)
        return self.projection(x) if self.projection is not None else x


class SelfAttention(nn.Module):
    """Multi-head self-attention sublayer with residual, LayerNorm and dropout.

    Post-LN: ``LN(x + drop(dense(attn(x))))``; pre-LN: ``x + drop(dense(attn(LN(x))))``.
    ``x`` float ``[batch, seq, H]``, ``attn_mask`` bool ``[batch, 1, 1, seq]`` (True = attend).
    """

    def __init__(self, cfg) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.pre_ln = cfg.pre_ln
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.dense = nn.Linear(h, h)
        self.LayerNorm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.attn_dropout = cfg.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        y = self.LayerNorm(x) if self.pre_ln else x

        def heads(z: torch.Tensor) -> torch.Tensor:
            return z.view(b, t, self.num_heads, h // self.num_heads).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(
            heads(self.query(y)),
            heads(self.key(y)),
            heads(self.value(y)),
            attn_mask=attn_mask,
            dropout_p=self.attn_dropout if self.training else 0.0,
        )
        out = self.dropout(self.dense(ctx.transpose(1, 2).reshape(b, t, h)))
        return x + out if self.pre_ln else self.LayerNorm(x + out)


class FeedForward(nn.Module):
    """Position-wise H → intermediate → H sublayer with activation, residual and LayerNorm
    (post- or pre-LN as ``SelfAttention``). ``x`` float ``[batch, seq, H]``."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.pre_ln = cfg.pre_ln
        self.intermediate = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.act = _act(cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.LayerNorm(x) if self.pre_ln else x
        out = self.dropout(self.output(self.act(self.intermediate(y))))
        return x + out if self.pre_ln else self.LayerNorm(x + out)


class Encoder(nn.Module):
    """Embeddings, then ``num_hidden_layers`` blocks of attention and feed-forward.

    ``attention`` and ``ffn`` hold L blocks each, or a single block applied at every layer
    when shared (``sharing``: all → both, attention → attention only, ffn → feed-forward
    only; Lan et al. 2020, §3.1 and Table 4). A shared block's LayerNorm is shared with it.

    forward(input_ids int64 ``[batch, seq]``, attention_mask ``[batch, seq]`` (1 = token,
    0 = padding; None = all tokens), token_type_ids int64 ``[batch, seq]`` or None) →
    float ``[batch, seq, H]``.

    ``with_embeddings=False`` builds the blocks alone (``embeddings`` is None, ``forward``
    unusable): ELECTRA's generator reads the discriminator's embeddings and runs
    ``layers`` on them (``pretrain.models.electra``).
    """

    def __init__(self, cfg, with_embeddings: bool = True) -> None:
        super().__init__()
        self.num_layers = cfg.num_hidden_layers
        n_attn = 1 if cfg.sharing in ("all", "attention") else cfg.num_hidden_layers
        n_ffn = 1 if cfg.sharing in ("all", "ffn") else cfg.num_hidden_layers
        self.embeddings = Embeddings(cfg) if with_embeddings else None
        self.attention = nn.ModuleList(SelfAttention(cfg) for _ in range(n_attn))
        self.ffn = nn.ModuleList(FeedForward(cfg) for _ in range(n_ffn))
        # Pre-LN leaves the residual stream unnormalised; the heads expect normalised input.
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if cfg.pre_ln else None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        return self.layers(self.embeddings(input_ids, token_type_ids, attention_mask), attention_mask)

    def layers(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The blocks (and pre-LN's final LayerNorm) on embedded input ``x`` float
        ``[batch, seq, H]`` with ``attention_mask`` ``[batch, seq]`` (1 = token) →
        float ``[batch, seq, H]``."""
        attn_mask = attention_mask.bool()[:, None, None, :]
        n_attn, n_ffn = len(self.attention), len(self.ffn)
        for i in range(self.num_layers):
            x = self.attention[i if n_attn > 1 else 0](x, attn_mask)
            x = self.ffn[i if n_ffn > 1 else 0](x)
        return self.final_layer_norm(x) if self.final_layer_norm is not None else x

    def block_parameters(self, applied: bool = False) -> int:
        """Parameters of the attention and feed-forward blocks: as stored (a shared block
        once) or, with ``applied``, as applied to each token (a shared block once per layer
        it runs in, since sharing saves memory, not compute; ALBERT §4.7)."""
        attn = sum(p.numel() for p in self.attention.parameters())
        ffn = sum(p.numel() for p in self.ffn.parameters())
        if not applied:
            return attn + ffn
        return self.num_layers * (attn // len(self.attention) + ffn // len(self.ffn))


class MLMHead(nn.Module):
    """BERT's MLM transform (dense H→E, activation, LayerNorm over E) and output bias; the
    decoder matrix is the word-embedding matrix passed in (tied, BERT §3.1 via its reference
    code; ALBERT decodes from E the same way).

    forward(h float ``[n, H]``, decoder_weight ``[vocab, E]``) → logits float ``[n, vocab]``.
    """

    def __init__(self, cfg) -> None:
        super().__init__()
        e = embedding_size(cfg)
        self.dense = nn.Linear(cfg.hidden_size, e)
        self.LayerNorm = nn.LayerNorm(e, eps=cfg.layer_norm_eps)
        self.act = _act(cfg.hidden_act)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h: torch.Tensor, decoder_weight: torch.Tensor) -> torch.Tensor:
        return F.linear(self.LayerNorm(self.act(self.dense(h))), decoder_weight, self.bias)


class SentenceHead(nn.Module):
    """Pooler + 2-way classifier on the first token, shared by NSP and SOP.

    ``pooler``: Linear(H, H) then tanh on ``h[:, 0]`` (BERT's reference implementation; the
    paper's C vector, Devlin et al. 2019 §3). ``classifier``: Linear(H, 2). No dropout: the
    reference pretraining code of BERT and ALBERT applies none before this classifier.
    Labels follow the Hugging Face convention the shards use: class 0 = "B follows A in the
    original text" (IsNext / in order), class 1 = "it does not".

    forward(hidden float ``[batch, seq, H]``) → logits float ``[batch, 2]``.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.pooler = nn.Linear(hidden_size, hidden_size)
        self.classifier = nn.Linear(hidden_size, 2)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.tanh(self.pooler(hidden[:, 0])))


class BertForPretraining(nn.Module):
    """Encoder + tied MLM head + optional sentence head (NSP or SOP); no loss.

    Args:
        cfg: a ``pretrain.config.ModelConfig`` with ``vocab_size`` set.
        sentence: ``none`` | ``nsp`` | ``sop`` (``objective.sentence``): whether the model
            has a sentence head (NSP and SOP heads have the same shape).

    forward(input_ids, attention_mask=None, token_type_ids=None, labels=None): int64
    ``[batch, seq]`` tensors; ``labels`` (-100 where nothing is predicted) only chooses the
    positions the MLM head decodes. Returns a dict: ``hidden_states`` float
    ``[batch, seq, H]``; ``mlm_logits`` float ``[n_labelled, vocab]`` at the positions where
    ``labels != -100`` in row-major order, or ``[batch, seq, vocab]`` without labels; with
    a sentence head ``sentence_logits`` float ``[batch, 2]``. Losses are the criteria's
    (``pretrain.criterions.pretraining.PretrainingCriterion``).

    Raises:
        UserError: at construction, for a config or objective it cannot build.
    """

    def __init__(self, cfg, sentence: str = "none") -> None:
        super().__init__()
        check_model_config(cfg)
        if sentence not in SENTENCE_OBJECTIVES:
            raise UserError(f"objective.sentence={sentence!r} is not one of: {', '.join(SENTENCE_OBJECTIVES)}")
        self.config = cfg
        self.sentence = sentence
        self.encoder = Encoder(cfg)
        self.mlm = MLMHead(cfg)
        self.sentence_head = SentenceHead(cfg.hidden_size) if sentence != "none" else None
        self.apply(self.init_module)

    def init_module(self, m: nn.Module) -> None:
        """BERT's initialisation (reference code, ``initializer_range`` 0.02): weights from a
        normal truncated at two standard deviations, zero biases, unit LayerNorm."""
        std = self.config.initializer_range
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        h = self.encoder(input_ids, attention_mask, token_type_ids)
        decoded = h if labels is None else h[labels != IGNORE_INDEX]
        out = {"hidden_states": h, "mlm_logits": self.mlm(decoded, self.encoder.embeddings.word_embeddings.weight)}
        if self.sentence_head is not None:
            out["sentence_logits"] = self.sentence_head(h)
        return out

    @torch.no_grad()
    def logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """MLM logits at every position, for comparison with Hugging Face and for
        fill-mask: ``mlm_logits`` float ``[batch, seq, vocab]`` and, with a sentence head,
        ``sentence_logits`` float ``[batch, 2]``. No gradient."""
        out = self.forward(input_ids, attention_mask, token_type_ids)
        del out["hidden_states"]
        return out

    def num_parameters(self, non_embedding: bool = False) -> int:
        """``count_parameters`` of this model."""
        return count_parameters(self, self.encoder, non_embedding)

    def applied_parameters(self) -> int:
        """``count_applied_parameters`` of this model."""
        return count_applied_parameters(self, self.encoder)


def count_parameters(model: nn.Module, encoder: Encoder, non_embedding: bool = False) -> int:
    """Parameter count of ``model``, each tensor once (tied and shared weights count once);
    ``non_embedding`` leaves out ``encoder``'s word and position embeddings, the N of the 6N
    FLOPs-per-token estimate (Kaplan et al. 2020)."""
    n = sum(p.numel() for p in model.parameters())
    if non_embedding:
        e = encoder.embeddings
        n -= e.word_embeddings.weight.numel() + e.position_embeddings.weight.numel()
    return n


def count_applied_parameters(model: nn.Module, encoder: Encoder) -> int:
    """Non-embedding parameters of ``model`` applied to each token: ``encoder``'s shared
    blocks count once per layer they run in (``Encoder.block_parameters``; ALBERT §4.7)."""
    return count_parameters(model, encoder, True) - encoder.block_parameters() + encoder.block_parameters(applied=True)


def flops_per_token(model: BertForPretraining, seq_len: int) -> float:
    """Training FLOPs per token: 6N + 12·L·H·T (Kaplan et al. 2020; PaLM appendix B), with
    N = ``model.applied_parameters()`` so shared layers cost what they compute."""
    c = model.config
    return 6.0 * model.applied_parameters() + 12.0 * c.num_hidden_layers * c.hidden_size * seq_len


def build_model(model_cfg, sentence: str = "none") -> BertForPretraining:
    """The pretraining model for ``model_cfg`` (a ModelConfig with vocab_size set) and the
    sentence objective ``sentence`` (``none`` | ``nsp`` | ``sop``). Build under
    ``torch.device("meta")`` to count parameters without allocating them.

    Raises:
        UserError: shapes it cannot build (hidden size not divisible by heads, E > H, ...)
            or an unknown objective.
    """
    return BertForPretraining(model_cfg, sentence)
