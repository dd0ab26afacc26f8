"""Pretraining: the trainer (set-up, step, loop), the run folder's rules, the online monitor,
signals, optimisers and schedules, and the run's metrics log."""
