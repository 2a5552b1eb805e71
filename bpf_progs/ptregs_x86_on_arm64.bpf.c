// SPDX-License-Identifier: GPL-2.0
// An object whose kprobe reads x86_64's pt_regs layout, run on arm64.
//
// Built with -D__TARGET_ARCH_x86 and no CO-RE, PT_REGS_PARM1(ctx) is a load of ctx->di: offset 112 of
// x86_64's struct pt_regs. On arm64 offset 112 is regs[14], not an argument. The harness builds each
// sample for the arch it runs on, so the x86_64 layout is written out here (the same loads that
// bpf_tracing.h's x86 accessors compile to), which keeps the object the same on both arches without a
// build option. The prototype check names the slot on arm64; on x86_64 the program is right.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

// arch/x86/include/asm/ptrace.h, up to di.
struct x86_64_regs {
	unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di;
};

__u64 last_file = 0;

SEC("kprobe/vfs_read")
int x86_parm1(struct x86_64_regs *ctx)
{
	last_file = ctx->di;
	return 0;
}
