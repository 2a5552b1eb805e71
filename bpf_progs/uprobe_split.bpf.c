// SPDX-License-Identifier: GPL-2.0
// Partial inlining: at -O2 GCC splits `lookup` of bpf_progs/user/split.c into an early exit, inlined
// into main(), and the body `lookup.part.0`. A probe on `lookup` has nothing to attach to (the UPROBE
// check names the clone to use); a probe on `lookup.part.0` fires, for the calls past the early exit.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

__u64 lookups = 0;

SEC("uprobe//mnt/user/split_O2:lookup")
int BPF_KPROBE(lookup_entry, const char *key)
{
	__sync_fetch_and_add(&lookups, 1);
	return 0;
}

SEC("uprobe//mnt/user/split_O2:lookup.part.0")
int BPF_KPROBE(lookup_body, const char *key)
{
	__sync_fetch_and_add(&lookups, 1);
	return 0;
}
