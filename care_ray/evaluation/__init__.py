"""evaluation: how far scores agree with what clients said — pure statistics (metrics), the
`evaluate` job that reads one or several scores folders and a corpus and writes the findings
tables, side by side with paired differences (evaluate), the lexical baseline every model must
beat (baseline), and whether predicted items behave like a WAI scale (scale).

May import: common, contracts, cluster, corpus, scoring."""
