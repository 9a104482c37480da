"""Data layer: training examples with label masks, the collator, and action tokens."""
