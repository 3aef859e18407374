"""contracts: the project's contracts as code, read from the files in schemas/ — the session
record a corpus holds (session), the rubric with its items, dimensions and prompt wording
(rubric), and the answer a model must give per item: its JSON schema, the tolerant parse, and how
a quote is matched against the dialogue (output).

May import: common."""
