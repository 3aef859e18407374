"""Rationale augmentation: a teacher model drafts one rationale per (session, item) for the
client's true rating (`draft`), experts review the drafts in a file (`review`), and `sft-data`
trains on the reviewed text."""
