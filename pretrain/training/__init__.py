"""The training loop and its components: world, DeepSpeed config, optimizer and schedule, batching, evaluation, checkpoints, run directory layout, MFU."""
