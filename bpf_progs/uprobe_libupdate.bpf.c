// SPDX-License-Identifier: GPL-2.0
// A uprobe on a shared library's function, across an update of the library. In the plain run it
// attaches by name and fires when libapp calls into libdemo.so. The harness also runs the
// library-update scenario on it (harness/scenarios.py): attached at v1's offset, the probe goes
// quiet once libdemo.v2.so (where `demo_work` moved) replaces the library, until it is re-attached.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

__u64 work = 0;

SEC("uprobe//mnt/user/libdemo.so:demo_work")
int BPF_KPROBE(demo_work, int x)
{
	__sync_fetch_and_add(&work, 1);
	return 0;
}
