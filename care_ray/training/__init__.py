"""Rationale-augmented SFT: examples and folds (sft_data), the job's config (config), the torch
training loop pieces (loop), the Ray Train job (trainer), checkpoint selection by held-out
Pearson r and export (selection), and the `sft-data` / `finetune` commands (cli)."""
