"""Core layer: the registry of backbone ids, prompt formats, and the backbone over an HF causal LM."""
