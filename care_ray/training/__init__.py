"""training: rationale-augmented SFT — examples from the scoring prompt (sft_data), the job's
settings (config), the torch pieces (loop), the step loop that Ray Train or a test drives (worker),
the Ray Train job per held-out fold (trainer), the memory plan a worker must fit before it starts
(memory), one-line failures (failures), learning curves (curves), and checkpoint selection and
export (selection).

May import: common, contracts, cluster, models, corpus, scoring, rationales, evaluation."""
