"""Rationale-augmented SFT: examples and folds (sft_data), the Ray Train loop (trainer),
checkpoint selection by held-out Pearson r (selection)."""
