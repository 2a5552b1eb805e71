"""Run: one matrix run as steps (programs, boot, facts, offline checks, cells) and the coordinator."""
