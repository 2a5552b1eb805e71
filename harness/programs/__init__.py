"""Programs: building bpf_progs/, the probe inventory of BPF objects, sidecars."""
