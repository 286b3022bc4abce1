"""Cluster jobs: `pretrain submit` renders and submits sbatch scripts; `pretrain status` reads their state."""
