"""care-ray analyze: findings from scored sessions (population, counselor profiles, drivers, contrasts, challenges, trajectories)."""
