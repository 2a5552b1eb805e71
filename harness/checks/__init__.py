"""Checks: one module per check, offline (from facts) and in-guest (from the agent's records)."""
