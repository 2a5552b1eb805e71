// SPDX-License-Identifier: GPL-2.0
// A helper that the program's type may call on one kernel and not on an older one.
//
// bpf_get_current_ancestor_cgroup_id() (helper 123) has been in the kernel since 5.7, for cgroup skb
// programs. Tracing programs (kprobe, tracepoint, raw_tp) got it later through bpf_tracing_func_proto:
// Debian's 5.10 feature probe lists it for none of them, 6.1's for all three. On 5.10 the verifier
// refuses the tracepoint below with "unknown func bpf_get_current_ancestor_cgroup_id#123", and the
// features check says so before any boot. On 6.1 it loads and runs.
// tp_cgroup_id calls bpf_get_current_cgroup_id(), which tracing programs have had since 4.18: it
// loads everywhere.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

__u64 ancestor_id = 0;
__u64 cgroup_id = 0;

SEC("tp/syscalls/sys_enter_openat")
int tp_ancestor_cgroup_id(void *ctx)
{
	ancestor_id = bpf_get_current_ancestor_cgroup_id(1);
	return 0;
}

SEC("tp/syscalls/sys_enter_openat")
int tp_cgroup_id(void *ctx)
{
	cgroup_id = bpf_get_current_cgroup_id();
	return 0;
}
