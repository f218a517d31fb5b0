"""Training: hand-written backward passes, losses, AdamW, data preparation and the training loop."""
