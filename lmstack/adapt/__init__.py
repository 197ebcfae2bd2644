"""Adaptation after pretraining: verifiable tasks, the chat template, SFT data and loss."""
