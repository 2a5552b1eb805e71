// SPDX-License-Identifier: GPL-2.0
// A sibling guard: the exists check is on one field, the read it protects on another.
//
// task_struct.state became __state in 5.14 (2f064a59a11f, "sched: Change task_struct::state"). The
// program asks whether the old field exists and otherwise reads the new one, with no exists check of
// its own on __state. On 5.10 the __state read is unresolved but sits on the branch the old field's
// check rules out; on 6.1 the same holds for the ___pre514 read. The verifier never walks the dead
// branch (libbpf patched the check to a constant), so the program loads on both, and the layout check
// passes each with a note naming the check that guards it.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

struct task_struct___pre514 {
	long state;
} __attribute__((preserve_access_index));

__u64 sleeping = 0;	// switches away from a task that is not TASK_RUNNING

SEC("tp/sched/sched_switch")
int sibling_guarded(void *ctx)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct task_struct___pre514 *old = (void *)t;
	unsigned long state;

	if (bpf_core_field_exists(old->state))
		state = BPF_CORE_READ(old, state);
	else
		state = BPF_CORE_READ(t, __state);
	if (state)
		__sync_fetch_and_add(&sleeping, 1);
	return 0;
}
