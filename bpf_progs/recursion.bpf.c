// SPDX-License-Identifier: GPL-2.0
// A program that makes its own hook run again: an fentry on htab_map_delete_elem() that deletes
// from a hash map (as the kernel selftests' recursion test does).
//
// tp_delete deletes from hash1 on every openat; that runs htab_map_delete_elem(), where
// on_htab_delete runs and deletes from hash2, which runs htab_map_delete_elem() again on the same
// CPU while on_htab_delete is still active.
//   - From 5.12, the trampoline does not run a program that is already running on this CPU and
//     counts the skipped run in recursion_misses (ca06f55b9002, "bpf: Add per-program recursion
//     prevention mechanism"; 9ed9e9ba2337, "bpf: Count the number of times recursion was
//     prevented"): on 6.1 x86_64 the fire check shows every nested delete as a miss.
//   - Before 5.12 nothing stops the nesting: the program runs again. It only deletes for hash1, so
//     the nesting stops after one level (without that test it would recurse until the stack
//     overflows). On 5.10 it fires twice per openat and the kernel has no counter of misses.
//   - arm64 attaches trampolines (fentry/fexit/lsm) only from 6.4: on 6.1 arm64 the attach fails.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} hash1 SEC(".maps"), hash2 SEC(".maps");

__u64 deletes = 0;

SEC("tp/syscalls/sys_enter_openat")
int tp_delete(void *ctx)
{
	__u32 key = 0;

	bpf_map_delete_elem(&hash1, &key);
	return 0;
}

SEC("fentry/htab_map_delete_elem")
int BPF_PROG(on_htab_delete, struct bpf_map *map)
{
	__u32 key = 0;

	__sync_fetch_and_add(&deletes, 1);
	if (map == (void *)&hash1)
		bpf_map_delete_elem(&hash2, &key);
	return 0;
}
