// SPDX-License-Identifier: GPL-2.0
// Syscall entry points are arch-specific wrappers since 4.17: __x64_sys_openat on x86_64,
// __arm64_sys_openat on arm64. A kprobe written against one never attaches on the other;
// ksyscall/ (libbpf 1.0+) picks the right wrapper for the running kernel.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

__u64 opens = 0;

SEC("kprobe/__x64_sys_openat")
int x64_openat(struct pt_regs *ctx)
{
	__sync_fetch_and_add(&opens, 1);
	return 0;
}

SEC("ksyscall/openat")
int BPF_KSYSCALL(ksyscall_openat)
{
	__sync_fetch_and_add(&opens, 1);
	return 0;
}

// The stable alternative: the syscalls tracepoint exists on every arch.
SEC("tp/syscalls/sys_enter_openat")
int tp_openat(void *ctx)
{
	__sync_fetch_and_add(&opens, 1);
	return 0;
}
