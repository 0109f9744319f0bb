"""The worker's runtime: the Faust app and the collaborators its agents call."""
