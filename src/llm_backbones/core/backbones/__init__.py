"""Backbones: the interface, the one HF implementation, how it is loaded, and the embedded default."""
