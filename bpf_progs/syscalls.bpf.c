// SPDX-License-Identifier: GPL-2.0
// A syscall probe written for one arch's wrapper.
//
// Since 4.17 (x86_64) every syscall is entered through an arch-specific pt_regs wrapper (fa697140f9a2,
// "syscalls/x86: Use 'struct pt_regs' based syscall calling convention for 64-bit syscalls"; arm64
// followed in 4.19): __x64_sys_openat on x86_64, __arm64_sys_openat on arm64. A kprobe
// written against one never attaches on the other (ENOENT on arm64 here). ksyscall/ (libbpf 1.0+)
// picks the running kernel's wrapper, and the syscalls:sys_enter_openat trace event exists on every
// arch.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

__u64 opens = 0;

// x86_64 only.
SEC("kprobe/__x64_sys_openat")
int x64_openat(struct pt_regs *ctx)
{
	__sync_fetch_and_add(&opens, 1);
	return 0;
}

// Portable: libbpf resolves the wrapper at attach time. (Without arguments: the libbpf 1.1 headers
// of Debian 12 cannot expand BPF_KSYSCALL's argument list.)
SEC("ksyscall/openat")
int BPF_KSYSCALL(ksyscall_openat)
{
	__sync_fetch_and_add(&opens, 1);
	return 0;
}

// Portable: the trace event made by the syscall tracer.
SEC("tp/syscalls/sys_enter_openat")
int tp_openat(void *ctx)
{
	__sync_fetch_and_add(&opens, 1);
	return 0;
}
