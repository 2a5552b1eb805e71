"""Run: the coordinator of one matrix run and its steps."""
