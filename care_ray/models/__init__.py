"""models: model folders — the checks a model or adapter folder must pass before anything starts
(checks), the tiny random Llama that tests and smoke runs use (tiny), and a real model made from a
GGUF file or the SmolLM2 wheel on PyPI (gguf).

May import: common, cluster."""
