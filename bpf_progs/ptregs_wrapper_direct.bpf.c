// SPDX-License-Identifier: GPL-2.0
// A kprobe on a syscall wrapper that reads the syscall's 2nd argument directly.
//
// Since 4.17 (ARCH_HAS_SYSCALL_WRAPPER) __x64_sys_openat and __arm64_sys_openat take one argument,
// the struct pt_regs of the syscall; the file name is PARM2 of *that*, not of the wrapper's own
// pt_regs. PT_REGS_PARM2(ctx) here is whatever the wrapper's caller left in that register. The fix is
// BPF_KSYSCALL (ksyscall/openat) or PT_REGS_PARM2_CORE_SYSCALL(PT_REGS_SYSCALL_REGS(ctx)).
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#if defined(__TARGET_ARCH_arm64)
#define OPENAT "__arm64_sys_openat"
#else
#define OPENAT "__x64_sys_openat"
#endif

__u64 last_filename = 0;

SEC("kprobe/" OPENAT)
int wrapper_parm2(struct pt_regs *ctx)
{
	last_filename = PT_REGS_PARM2(ctx);
	return 0;
}
