"""Kernels: the kernels.yaml catalogue, the Debian archive, fetch + verify + cache, images, facts."""
