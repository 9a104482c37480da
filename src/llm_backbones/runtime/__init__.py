"""Runtime layer: greedy generation, fused projections and the chunked loss, over plain HF models."""
