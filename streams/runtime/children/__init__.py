"""The worker's child processes: the plumbing, and the jobs each child runs."""
