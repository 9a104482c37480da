"""Training layer: fine-tuning modes, the training loop, run checkpoints, LoRA and FSDP."""
