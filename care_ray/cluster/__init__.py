"""cluster: where a job runs and where its files live — the one Ray start-up every job uses (ray),
resources asked of the nodes (resources), local paths and object-store URIs behind one interface
(storage), the offline switches for the driver and every worker (offline), and what differs under
`ray job submit` (jobs).

May import: common."""
