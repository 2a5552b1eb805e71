"""Repository-local pytest settings; the matrix plugin itself is registered as the bpf_matrix entry point."""
