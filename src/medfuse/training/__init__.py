"""Trainer, stages, losses and metrics."""
