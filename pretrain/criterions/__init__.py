"""Criteria (fairseq's split): turn model outputs and a batch into (loss_sum, sample_size, logs)."""
