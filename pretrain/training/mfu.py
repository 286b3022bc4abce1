"""Model FLOPs utilization (MFU): the model FLOP/s a run achieves over the device's peak.

Model FLOPs count what the model needs, not what the hardware ran: per token
``6N + 12·L·H·T`` (``pretrain.models.encoder.flops_per_token``; Kaplan et al. 2020 §2.1 for 6N,
PaLM, Chowdhery et al. 2022, appendix B for the attention term and the MFU definition),
with N the non-embedding parameters applied per token and T the length of the token's
own sequence — so padding, recomputation and the logits we skip at unmasked positions
cost nothing here, and MFU compares implementations fairly.

The peak is ``train.peak_flops`` (FLOP/s of one device, i.e. one rank) when set, else a
dense tensor-core peak from NVIDIA's data sheets looked up by ``torch.cuda`` device name
and ``train.precision``; on CPU, or on a GPU/precision not in the table, there is no MFU
unless the peak is configured.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence, Tuple

import numpy as np

from pretrain.models.encoder import flops_per_token

# (device-name pattern, precision, dense peak FLOP/s per GPU). NVIDIA data sheets:
# A100 (SXM and PCIe) 312 TFLOP/s BF16/FP16 tensor cores; H100 SXM 989 TFLOP/s BF16/FP16
# (the PCIe and NVL parts are slower and deliberately absent); V100 125 TFLOP/s FP16
# (no bf16).
GPU_PEAK_FLOPS: Tuple[Tuple[str, str, float], ...] = (
    (r"A100", "bf16", 312e12),
    (r"A100", "fp16", 312e12),
    (r"H100.*(SXM|HBM3)", "bf16", 989e12),
    (r"H100.*(SXM|HBM3)", "fp16", 989e12),
    (r"V100", "fp16", 125e12),
)


def gpu_peak_flops(device_name: str, precision: str) -> Optional[float]:
    """Dense peak FLOP/s of a GPU named ``device_name`` (``torch.cuda.get_device_name``) in
    ``precision`` (``bf16``/``fp16``), or None if the table does not know the pair."""
    for pattern, prec, peak in GPU_PEAK_FLOPS:
        if prec == precision and re.search(pattern, device_name):
            return peak
    return None


def peak_flops(train_cfg) -> Optional[float]:
    """Peak FLOP/s of one rank's device for ``train_cfg`` (a TrainConfig): the configured
    ``peak_flops``, else the GPU table for this process's CUDA device, else None (CPU)."""
    if train_cfg.peak_flops is not None:
        return float(train_cfg.peak_flops)
    import torch

    if torch.cuda.is_available():
        return gpu_peak_flops(torch.cuda.get_device_name(), train_cfg.precision)
    return None


class ModelFlops:
    """Training FLOPs (forward + backward) of sequences of given lengths for one model.

    ``flops_per_token(model, T)`` is linear in T, so a batch of sequences with lengths
    n_i costs ``a·Σ n_i + b·Σ n_i²`` with ``a = flops_per_token(model, 0)`` (6N) and
    ``b = flops_per_token(model, 1) - a`` (12·L·H). Build it before DeepSpeed partitions
    the parameters (ZeRO-3 leaves empty tensors behind).
    """

    def __init__(self, model) -> None:
        self.per_token = flops_per_token(model, 0)
        self.per_token_per_position = flops_per_token(model, 1) - self.per_token

    def __call__(self, lengths: Sequence[int] | np.ndarray) -> float:
        """FLOPs of one training pass over sequences of ``lengths`` tokens (int ``[n]``)."""
        n = np.asarray(lengths, dtype=np.float64)
        return float(self.per_token * n.sum() + self.per_token_per_position * (n * n).sum())
