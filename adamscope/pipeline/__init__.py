"""Running an analysis: which checkpoints a path holds, torch.distributed, the per-checkpoint pipeline."""
