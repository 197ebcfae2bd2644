"""Training: the LightningModule, losses, parameter groups and token-based LR schedules."""
