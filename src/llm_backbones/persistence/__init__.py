"""Persistence layer: saving and loading backbones, and reading OpenVLA checkpoints."""
