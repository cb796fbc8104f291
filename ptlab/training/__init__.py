"""The training loop: rollouts, samplers, the LightningModule, warm start, summaries."""
