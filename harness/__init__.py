"""bpf-kernel-matrix: boot many kernels, load eBPF programs in each, and report a compatibility matrix."""

__version__ = "0.1.0"
