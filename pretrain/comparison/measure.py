"""Size and speed of one model: parameter counts, bytes on disk, forward-pass timings, and the
dynamic int8 copy.

The measured model is what a fine-tuned encoder runs at inference: the encoder with a
two-class sequence-classification head (``pretrain.models.heads.FineTuneModel``; BERT,
ALBERT, DistilBERT and ELECTRA's discriminator: pooler + classifier, RoBERTa: its
``dense``/``out_proj`` head), randomly initialised (timings and sizes do not depend on the
values). Hugging Face's ``*ForSequenceClassification`` classes of the same shapes have the
same parameter counts (BERT-base 109,483,778; DistilBERT-base 66,955,010).

Timing: ``torch.inference_mode``, eval mode, float32, full-length rows of random token ids
(attention mask all ones). After ``warmup`` untimed calls, ``repeats`` timed runs; a run at
batch 32 is one forward call; a run at batch 1 is as many back-to-back calls as fill
``MIN_RUN_S`` (estimated from the warm-up; timeit's autorange idea), divided by their count,
so a sub-millisecond model is not timed at the clock's resolution. The reported value is
the median over runs; the runs themselves are kept for the CSV. ``Timer`` does one run at a
time so a caller can interleave models (``pretrain.comparison.run``).

Dynamic int8 (``torch.ao.quantization.quantize_dynamic``, Jacob et al. 2018 via PyTorch's
dynamic quantization): every ``nn.Linear`` gets qint8 weights, quantized per tensor once,
and activations quantized per batch at run time; embeddings, LayerNorm and attention's
matrix products stay float32. CPU only.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import torch
from torch import nn

MIN_RUN_S = 1.0
NUM_LABELS = 2


def classifier(cfg: Any, seed: int = 0) -> nn.Module:
    """The measured model for ModelConfig ``cfg``: ``FineTuneModel(cfg, "sequence", 2)`` in
    eval mode, float32 on CPU, initialised under ``seed``."""
    from pretrain.models.heads import FineTuneModel

    torch.manual_seed(seed)
    return FineTuneModel(cfg, "sequence", NUM_LABELS).eval()


def parameter_counts(model: nn.Module) -> Dict[str, int]:
    """``{"total", "non_embedding"}``: every tensor once; non-embedding leaves out the word
    and position embedding tables (``FineTuneModel.num_parameters``; Kaplan et al. 2020's N)."""
    return {"total": model.num_parameters(), "non_embedding": model.num_parameters(non_embedding=True)}


def electra_parameters(cfg: Any, electra_cfg: Any) -> Dict[str, int]:
    """ELECTRA's pretraining pair, counted on the ``meta`` device: ``generator`` (its blocks,
    its E→H projection and its MLM head; the embeddings it reads are the discriminator's),
    ``discriminator`` (encoder + replaced-token head) and ``pair`` (both, each tensor once)."""
    from pretrain.models.electra import ElectraForPretraining

    with torch.device("meta"):
        m = ElectraForPretraining(cfg, electra_cfg)

    def count(*mods: Any) -> int:
        return sum(p.numel() for mod in mods if mod is not None for p in mod.parameters())

    return {"generator": count(m.generator, m.generator_projection, m.generator_head),
            "discriminator": count(m.discriminator, m.discriminator_head), "pair": count(m)}


def safetensors_bytes(model: nn.Module, directory: Path) -> int:
    """Size in bytes of ``model``'s float32 weights written as one safetensors file in
    ``directory`` (the file is deleted again)."""
    from safetensors.torch import save_model

    path = Path(directory) / "model.safetensors"
    save_model(model, str(path))
    try:
        return path.stat().st_size
    finally:
        path.unlink()


def torch_save_bytes(model: nn.Module, directory: Path) -> int:
    """Size in bytes of ``torch.save(model.state_dict())`` in ``directory`` (how a dynamically
    quantized model is saved: its packed int8 weights have no safetensors form); the file is
    deleted again and never loaded."""
    path = Path(directory) / "model.pt"
    torch.save(model.state_dict(), path)
    try:
        return path.stat().st_size
    finally:
        path.unlink()


def quantize_int8(model: nn.Module) -> nn.Module:
    """A dynamically quantized copy of ``model``: ``nn.Linear`` → qint8 weights
    (``torch.ao.quantization.quantize_dynamic``); ``model`` is left as it is."""
    with warnings.catch_warnings():
        # torch 2.13 announces the deprecation of quantized tensor creation on every call;
        # quantize_dynamic is still the API the comparison measures (issue 16) ...
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated", category=UserWarning)
        # ... and of torch.ao.quantization itself (torchao's quantize_ is the successor).
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated", category=DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def random_inputs(cfg: Any, batch: int, seq: int, device: str = "cpu", seed: int = 0) -> Dict[str, torch.Tensor]:
    """``input_ids`` int64 ``[batch, seq]`` uniform over the vocabulary (seeded),
    ``attention_mask`` all ones, ``token_type_ids`` zeros; on ``device``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "token_type_ids": torch.zeros_like(ids).to(device)}


@dataclass
class Timing:
    """Median forward time per call (seconds) over ``runs`` at one batch size."""

    batch: int
    seq: int
    device: str
    runs: List[float] = field(default_factory=list)
    calls_per_run: int = 1

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs)

    @property
    def ms_per_sequence(self) -> float:
        return 1e3 * self.median_s / self.batch

    @property
    def sequences_per_s(self) -> float:
        return self.batch / self.median_s


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Timer:
    """Timed forward passes of ``model`` on ``random_inputs(cfg, batch, seq)`` on ``device``
    (module docstring: warm-up, runs, median). ``warm`` first, then ``run`` once per timed
    run; callers interleave the runs of several models so that a change in the machine's
    load falls on all of them alike."""

    def __init__(self, model: nn.Module, cfg: Any, batch: int, seq: int, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.x = random_inputs(cfg, batch, seq, device)
        self.timing = Timing(batch, seq, device)

    def _call(self, n: int) -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            for _ in range(n):
                self.model(**self.x)
            _sync(self.timing.device)
            return time.perf_counter() - t0

    def warm(self, calls: int) -> None:
        """``calls`` (at least 1) untimed calls; at batch 1 they also set how many calls
        one timed run makes (enough for ``MIN_RUN_S``)."""
        per_call = self._call(max(1, calls)) / max(1, calls)
        if self.timing.batch == 1:
            self.timing.calls_per_run = max(1, int(MIN_RUN_S / max(per_call, 1e-6)))

    def run(self) -> None:
        """One timed run, appended to ``timing.runs`` (seconds per call)."""
        n = self.timing.calls_per_run
        self.timing.runs.append(self._call(n) / n)


def time_forward(model: nn.Module, cfg: Any, batch: int, seq: int, repeats: int, warmup: int,
                 device: str = "cpu") -> Timing:
    """``Timer(model, cfg, batch, seq, device)``: ``warmup`` calls, then ``repeats`` (>= 1)
    timed runs in a row."""
    t = Timer(model, cfg, batch, seq, device)
    t.warm(warmup)
    for _ in range(repeats):
        t.run()
    return t.timing


def load_average() -> List[float]:
    """The 1, 5 and 15 minute load averages (``os.getloadavg``)."""
    return [round(x, 2) for x in os.getloadavg()]
