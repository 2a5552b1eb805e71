// SPDX-License-Identifier: GPL-2.0
// An LSM program and the hooks to use where it cannot attach.
//
// lsm/ programs (BPF LSM, 5.7) need CONFIG_BPF_LSM, `bpf` among the active LSMs (lsm= on the
// command line: Debian builds it in but does not enable it; the matrix boots with it), and BPF
// trampolines, which arm64 gained only in 6.4 (ftrace direct calls): on 6.1 arm64 the attach fails
// with ENOTSUPP. The file_open hook itself is stable since 5.7. For observing (not denying) opens,
// a kprobe on security_file_open() (the function that calls the hook) works on every arch here,
// and the syscalls:sys_enter_openat trace event is the stable, arch-independent alternative.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

__u64 opens = 0;

SEC("lsm/file_open")
int BPF_PROG(lsm_file_open, struct file *file)
{
	__sync_fetch_and_add(&opens, 1);
	return 0;	// allow
}

SEC("kprobe/security_file_open")
int BPF_KPROBE(kprobe_security_file_open, struct file *file)
{
	__sync_fetch_and_add(&opens, 1);
	return 0;
}

SEC("tp/syscalls/sys_enter_openat")
int tp_sys_enter_openat(void *ctx)
{
	__sync_fetch_and_add(&opens, 1);
	return 0;
}
