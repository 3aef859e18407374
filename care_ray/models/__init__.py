"""models: model folders — the checks a model or adapter folder must pass before anything starts
(checks) and the tiny random Llama that tests and smoke runs use (tiny).

May import: common, cluster."""
