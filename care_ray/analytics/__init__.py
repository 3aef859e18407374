"""care-ray analyze: findings from scored sessions.

Population, counselor profiles, drivers, contrasts, challenges, trajectories.
"""
