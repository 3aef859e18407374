"""scoring: a corpus → (session, item) prompts → engines → validated scores, exactly once.

The prompt both training and scoring use (prompts), the engines (engines/: vLLM, the transformers
fallback, a named fault-injection double), the pure core that turns prompts and an engine into
result rows (items), the settings (config) and their fingerprint (fingerprint), the run folder's
commit protocol (results), the checks before a run (checks), the Ray Data stages (stages), the job
(pipeline), the cut points of a session's timeline (timeline), and the planner that sizes a run
before it starts (plan).

May import: common, contracts, cluster, models, corpus."""
