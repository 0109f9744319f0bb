"""Development tools: a local broker, the evaluation data sets, worker processes."""
