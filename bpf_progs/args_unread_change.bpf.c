// SPDX-License-Identifier: GPL-2.0
// A changed parameter that the program does not read.
//
// vfs_unlink() gained a first parameter in 5.12 (6521f8917082, "namei: prepare for idmapped mounts"),
// which moved every other one. This kprobe only counts calls: it loads nothing from pt_regs, so the
// change is a note on its passing prototype cell, not a failure (compare vfs_unlink.bpf.c, whose
// programs read the moved dentry).
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

__u64 unlinks = 0;

SEC("kprobe/vfs_unlink")
int count_unlinks(struct pt_regs *ctx)
{
	__sync_fetch_and_add(&unlinks, 1);
	return 0;
}
