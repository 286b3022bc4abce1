"""ELECTRA's generator and discriminator as one trainable module (Clark et al. 2020).

Replaced-token detection (§2, Figure 2): a small masked-LM *generator* fills the masked
positions of an input with tokens sampled from its softmax; a *discriminator* reads the
corrupted sequence and predicts, for every token, whether it is the original or a
replacement. Both train together (generator: MLM loss; discriminator: binary loss; the
sampling passes no gradient). After pretraining the discriminator is the model
(``ElectraForPreTraining``); the generator is an MLM (``ElectraForMaskedLM``).

Shapes (``generator_config``): the generator is the discriminator's encoder at
``electra.generator_size`` of its hidden size (feed-forward 4H, H/64 heads, at least one),
at ``electra.generator_layers`` of its depth — google-research/electra's
``run_pretraining.get_generator_config``. Embeddings are shared (§3.2 "Weight sharing":
tying the token embeddings helps, tying all weights does not pay for same-size models):
the discriminator's ``Embeddings`` module — word, position and token-type tables and
their LayerNorm, of size E — feeds both, as the reference builds both models under the
one ``electra/embeddings`` variable scope; each model has its own E→H projection when its
hidden size differs from E (the reference's ``embeddings_project``). The generator's MLM
head decodes through the shared word embeddings (tied, as BERT).

One module holds both (what DeepSpeed wraps), so checkpoints, resume and ZeRO treat the
pair as one model; every parameter appears once in its state dict.
"""

from __future__ import annotations

import copy
from typing import Dict, Optional

import torch
from torch import nn

from common.errors import UserError
from common.schema import IGNORE_INDEX
from pretrain.models.encoder import (
    BertForPretraining,
    Encoder,
    MLMHead,
    _act,
    check_model_config,
    embedding_size,
)


def generator_config(model_cfg, electra_cfg):
    """The generator's ModelConfig: a copy of the discriminator's ``model_cfg`` with hidden
    size ``round(H · generator_size)``, ``round(L · generator_layers)`` layers, feed-forward
    4× its hidden size and ``max(1, hidden // 64)`` heads (google-research/electra,
    ``run_pretraining.get_generator_config``; Table 6 calls generator_size the multiplier
    of hidden size, FFN size and heads, which gives the same shapes for Small and Base), and
    the discriminator's embedding size E (the shared tables).

    Raises:
        UserError: a generator of no width or depth, or whose hidden size its heads do
            not divide.
    """
    g = copy.deepcopy(model_cfg)
    h = int(round(model_cfg.hidden_size * electra_cfg.generator_size))
    layers = int(round(model_cfg.num_hidden_layers * electra_cfg.generator_layers))
    if h < 1 or layers < 1:
        raise UserError(
            f"electra.generator_size={electra_cfg.generator_size} and generator_layers="
            f"{electra_cfg.generator_layers} of model.hidden_size={model_cfg.hidden_size} x "
            f"num_hidden_layers={model_cfg.num_hidden_layers} leave a generator of hidden size {h} and {layers} layers; "
            "both must be >= 1"
        )
    heads = max(1, h // 64)
    if h % heads:
        raise UserError(f"the generator's hidden size {h} (electra.generator_size x model.hidden_size) "
                        f"is not divisible by its {heads} heads (hidden // 64); choose a generator_size giving a multiple of 64")
    g.hidden_size, g.num_hidden_layers, g.intermediate_size, g.num_attention_heads = h, layers, 4 * h, heads
    g.embedding_size = embedding_size(model_cfg)
    return g


class DiscriminatorHead(nn.Module):
    """Per-token replaced/original classifier: dense H→H, activation (``model.hidden_act``),
    dense H→1 (the reference's ``discriminator_predictions``; Hugging Face's
    ``ElectraDiscriminatorPredictions``).

    forward(h float ``[batch, seq, H]``) → logits float ``[batch, seq]`` (> 0: replaced).
    """

    def __init__(self, cfg) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = _act(cfg.hidden_act)
        self.dense_prediction = nn.Linear(cfg.hidden_size, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.dense_prediction(self.act(self.dense(h))).squeeze(-1)


class ElectraForPretraining(nn.Module):
    """Generator + discriminator with shared embeddings; logits, samples and labels, no loss.

    Args:
        cfg: the discriminator's ``pretrain.config.ModelConfig`` (vocab_size set).
        electra_cfg: ``pretrain.config.ElectraConfig`` (generator shape, temperature).

    Submodules: ``discriminator`` (an ``Encoder`` that owns the shared embeddings and, when
    E ≠ H, the discriminator's projection), ``discriminator_head``, ``generator`` (blocks
    only), ``generator_projection`` (E → generator hidden, None when equal) and
    ``generator_head`` (BERT's MLM transform, decoding through the shared word embeddings).

    Raises:
        UserError: at construction, for shapes it cannot build.
    """

    def __init__(self, cfg, electra_cfg) -> None:
        super().__init__()
        check_model_config(cfg)
        self.config = cfg
        self.electra_config = electra_cfg
        self.generator_config = gcfg = generator_config(cfg, electra_cfg)
        self.temperature = float(electra_cfg.temperature)
        e = embedding_size(cfg)
        self.discriminator = Encoder(cfg)
        self.discriminator_head = DiscriminatorHead(cfg)
        self.generator = Encoder(gcfg, with_embeddings=False)
        self.generator_projection = nn.Linear(e, gcfg.hidden_size) if e != gcfg.hidden_size else None
        self.generator_head = MLMHead(gcfg)
        self.apply(self.init_module)

    def init_module(self, m: nn.Module) -> None:
        """BERT's initialisation (``BertForPretraining.init_module``): the reference
        initialises both networks with BERT's ``create_initializer``."""
        BertForPretraining.init_module(self, m)

    @property
    def embeddings(self):
        """The shared ``Embeddings`` module (word, position, token type, LayerNorm)."""
        return self.discriminator.embeddings

    def generator_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         token_type_ids: torch.Tensor) -> torch.Tensor:
        """The generator's last hidden states, float ``[batch, seq, H_gen]``."""
        x = self.embeddings.embed(input_ids, token_type_ids, attention_mask)
        if self.generator_projection is not None:
            x = self.generator_projection(x)
        return self.generator.layers(x, attention_mask)

    def generator_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """MLM logits float ``[..., vocab]`` of generator hidden states ``[..., H_gen]``."""
        return self.generator_head(hidden, self.embeddings.word_embeddings.weight)

    def discriminator_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                             token_type_ids: torch.Tensor) -> torch.Tensor:
        """Replaced-token logits float ``[batch, seq]``."""
        return self.discriminator_head(self.discriminator(input_ids, attention_mask, token_type_ids))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        labels: torch.Tensor,
        sampler: Optional[torch.Generator] = None,
    ) -> Dict[str, torch.Tensor]:
        """One ELECTRA pass.

        Args:
            input_ids: int64 ``[batch, seq]``, the masked input (the collator's: [MASK] at
                most masked positions, the original token at the rest).
            attention_mask: ``[batch, seq]``, 1 = token, 0 = padding.
            token_type_ids: int64 ``[batch, seq]``.
            labels: int64 ``[batch, seq]``: the original token at masked positions, -100
                elsewhere.
            sampler: the random generator of the sampling (None = torch's global one,
                which checkpoints save and resume restores).
        Returns:
            ``mlm_logits`` float ``[n_masked, vocab]`` (generator, masked positions in
            row-major order), ``sampled`` int64 ``[n_masked]`` (drawn from
            softmax(mlm_logits / temperature), no gradient), ``disc_logits`` float
            ``[batch, seq]`` on the corrupted input, ``replaced`` bool ``[batch, seq]``
            (the corrupted token differs from the original: a sample equal to the
            original counts as original, as in the reference's ``_get_fake_data``).
        """
        masked = labels != IGNORE_INDEX
        hidden = self.generator_hidden(input_ids, attention_mask, token_type_ids)
        mlm_logits = self.generator_logits(hidden[masked])
        with torch.no_grad():
            probs = torch.softmax(mlm_logits.detach().float() / self.temperature, dim=-1)
            sampled = torch.multinomial(probs, 1, generator=sampler).squeeze(-1) if probs.numel() else \
                labels.new_zeros(0)
            original = torch.where(masked, labels, input_ids)
            corrupted = original.clone()
            corrupted[masked] = sampled
            replaced = corrupted != original
        disc_logits = self.discriminator_logits(corrupted, attention_mask, token_type_ids)
        return {"mlm_logits": mlm_logits, "sampled": sampled, "disc_logits": disc_logits, "replaced": replaced}

    def applied_parameters(self) -> Dict[str, int]:
        """Non-embedding parameters applied per token, per network (shared blocks count
        once per layer they run in): ``{"generator": N_g, "discriminator": N_d}``; the
        shared word and position tables count in neither (``BertForPretraining``'s rule)."""
        def blocks(enc: Encoder) -> int:
            final = sum(p.numel() for p in enc.final_layer_norm.parameters()) if enc.final_layer_norm is not None else 0
            return enc.block_parameters(applied=True) + final

        def count(*mods: Optional[nn.Module]) -> int:
            return sum(p.numel() for m in mods if m is not None for p in m.parameters())

        emb = self.embeddings
        shared = count(emb.token_type_embeddings, emb.LayerNorm)
        return {
            "generator": blocks(self.generator) + count(self.generator_projection, self.generator_head) + shared,
            "discriminator": blocks(self.discriminator) + count(emb.projection, self.discriminator_head) + shared,
        }


def electra_flops_per_token(model: ElectraForPretraining, seq_len: int) -> float:
    """Training FLOPs per token of both networks, forward and backward: Σ over generator and
    discriminator of 6N + 12·L·H·T (``pretrain.models.encoder.flops_per_token``'s rule), so
    an equal-compute comparison with MLM charges ELECTRA for its generator (Clark et al.
    2020, Table 1 and §3.3 count the generator's FLOPs too)."""
    n = model.applied_parameters()
    c, g = model.config, model.generator_config
    return (6.0 * (n["generator"] + n["discriminator"])
            + 12.0 * seq_len * (c.num_hidden_layers * c.hidden_size + g.num_hidden_layers * g.hidden_size))


def discriminator_encoder_state(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The discriminator's encoder weights of an ``ElectraForPretraining`` state dict under
    ``BertForPretraining``'s names (``discriminator.X`` → ``encoder.X``): the model ELECTRA
    fine-tunes (§2: the generator is thrown out). Load it with ``strict=False`` into a
    ``BertForPretraining`` (its MLM head stays untrained) or an encoder with a task head;
    the discriminator head, generator and generator head are left out."""
    prefix = "discriminator."
    return {"encoder." + k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
