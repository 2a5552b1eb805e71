// SPDX-License-Identifier: GPL-2.0
// A target that GCC clones: do_execveat_common() (fs/exec.c), which every execve() goes through.
//
// On Debian's 5.10 it is a plain (static) function in kallsyms and a kprobe on it works. On Debian's
// 6.1, on x86_64 and arm64, GCC emitted only an interprocedural-SRA clone,
// `do_execveat_common.isra.0` (an argument removed or passed by value): the name the source has is
// not in kallsyms, so the kprobe fails to attach. Attaching to the clone works on 6.1 but not on
// 5.10, and which functions get cloned changes with every compiler and config: neither name is
// portable. bprm_execve() (5.9+, "exec: Factor bprm_execve out of do_execve_common") is plain on
// both, and the sched:sched_process_exec tracepoint is the stable hook for "a task exec'd".
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

__u64 execs = 0;

// The name in the source: attaches on 5.10, not on 6.1.
SEC("kprobe/do_execveat_common")
int kprobe_do_execveat_common(struct pt_regs *ctx)
{
	__sync_fetch_and_add(&execs, 1);
	return 0;
}

// Chasing the clone: attaches on 6.1, not on 5.10 (where no clone exists).
SEC("kprobe/do_execveat_common.isra.0")
int kprobe_do_execveat_common_isra(struct pt_regs *ctx)
{
	__sync_fetch_and_add(&execs, 1);
	return 0;
}

// A plain function one level down: on 5.10 and 6.1 (not an ABI either).
SEC("kprobe/bprm_execve")
int kprobe_bprm_execve(struct pt_regs *ctx)
{
	__sync_fetch_and_add(&execs, 1);
	return 0;
}

// The stable hook.
SEC("tp/sched/sched_process_exec")
int tp_sched_process_exec(void *ctx)
{
	__sync_fetch_and_add(&execs, 1);
	return 0;
}
