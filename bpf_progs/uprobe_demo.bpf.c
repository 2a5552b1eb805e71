// SPDX-License-Identifier: GPL-2.0
// A uprobe on a small static function of bpf_progs/user/demo.c, built twice. demo_O0 keeps
// `compute` out of line: the probe attaches and fires once per call. demo_O2 inlines it into main()
// and has no `compute` symbol: the UPROBE check says so from DWARF before any VM boots, and the
// attach fails in the guest. /mnt/user/ is where the harness ships the samples built for the guest's arch.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

__u64 calls = 0;

SEC("uprobe//mnt/user/demo_O0:compute")
int BPF_KPROBE(compute_O0, int x)
{
	__sync_fetch_and_add(&calls, 1);
	return 0;
}

SEC("uprobe//mnt/user/demo_O2:compute")
int BPF_KPROBE(compute_O2, int x)
{
	__sync_fetch_and_add(&calls, 1);
	return 0;
}
