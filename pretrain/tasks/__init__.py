"""Tasks: what a run trains (modules, batches, criterion, metrics), plugged into the one loop in ``pretrain.training.loop``."""
