// SPDX-License-Identifier: GPL-2.0
// A struct field that does not exist on every kernel: task_struct.state became __state in 5.14
// (2f064a59a11f, "sched: Change task_struct::state"), so that stray plain accesses would no longer
// compile; since then every reader goes through READ_ONCE / get_current_state().
//
// A CO-RE read of a field that the running kernel lacks is a failed relocation: libbpf poisons the
// instruction and the verifier rejects the program ("invalid func unknown#195896080"), so the
// program does not load at all. vmlinux.h comes from the newest kernel and has `__state`; the old
// name is declared as a ___flavor, which libbpf matches against `struct task_struct`.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

struct task_struct___pre514 {
	long state;
} __attribute__((preserve_access_index));

__u64 sleeping = 0;	// switches away from a task that is not TASK_RUNNING

static __always_inline void count(unsigned int state)
{
	if (state)
		__sync_fetch_and_add(&sleeping, 1);
}

// Blind, new name: fails to load before 5.14 (5.10 here).
SEC("tp/sched/sched_switch")
int state_new_blind(void *ctx)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();

	count(BPF_CORE_READ(t, __state));
	return 0;
}

// Blind, old name: fails to load from 5.14 on (6.1 here).
SEC("tp/sched/sched_switch")
int state_old_blind(void *ctx)
{
	struct task_struct___pre514 *t = (void *)bpf_get_current_task();

	count(BPF_CORE_READ(t, state));
	return 0;
}

// Guarded: bpf_core_field_exists() is resolved at load time, and the branch the kernel cannot take
// (with its poisoned read) is dead code the verifier never walks. Loads everywhere.
SEC("tp/sched/sched_switch")
int state_guarded(void *ctx)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct task_struct___pre514 *old = (void *)t;

	if (bpf_core_field_exists(t->__state))
		count(BPF_CORE_READ(t, __state));
	else if (bpf_core_field_exists(old->state))
		count(BPF_CORE_READ(old, state));
	return 0;
}
