"""Ablations: run every arm of an ablation (`pretrain ablate`) and regenerate its tables and plots from run directories (`pretrain tables`)."""
