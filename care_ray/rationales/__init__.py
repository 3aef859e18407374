"""rationales: a teacher model drafts one rationale per (session, item) for the client's true
rating on scoring's engine path (draft), experts review the drafts in a file (review), and the
tables both share live in one place (tables), for sft-data to train on the reviewed text.

May import: common, contracts, cluster, models, corpus, scoring."""
