"""evaluation: how far scores agree with what clients said — pure statistics (metrics) and the
`evaluate` job that reads a scores folder and a corpus and writes the findings tables (evaluate).

May import: common, contracts, cluster, corpus, scoring."""
