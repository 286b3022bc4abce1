"""Pretraining of BERT-family encoders: model, objectives, DeepSpeed trainer, evaluation,
ablation runner and result tables."""
