// SPDX-License-Identifier: GPL-2.0
// What a loader sets at run time, which the object alone lacks (as libbpf-tools' loaders do).
//
//   - fentry/dummy_file_open: a placeholder the loader replaces with the real function through
//     bpf_program__set_attach_target() (opensnoop, filelife and fsslower pick vfs_open, or another,
//     by kernel). Loaded as it is, libbpf finds no `dummy_file_open` in the kernel's BTF.
//   - stackmap: a stack-trace map with neither max_entries nor value_size; the loader sizes it from
//     its options (offcputime's --stack-storage-size, --perf-max-stack-depth).
//   - counts: an array whose value size the loader chooses (0 here): the kernel refuses to create it
//     until the loader sets one.
//   - with_stacks: a .rodata switch the loader sets before load (const volatile: the verifier prunes
//     the branch it turns off).
//   - never_loaded: a program the loader leaves out (bpf_program__set_autoload(prog, false)); its
//     target exists on no kernel.
// The sidecar says all of it under `loader:`; without it the object does not load.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

const volatile bool with_stacks = false;

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(key_size, sizeof(__u32));
} stackmap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 0);
	__uint(max_entries, 1);
} counts SEC(".maps");

SEC("fentry/dummy_file_open")
int BPF_PROG(file_open, const struct path *path, struct file *file)
{
	__u32 zero = 0;
	__u64 *count = bpf_map_lookup_elem(&counts, &zero);

	if (count)
		__sync_fetch_and_add(count, 1);
	if (with_stacks)
		bpf_get_stackid(ctx, &stackmap, 0);
	return 0;
}

SEC("kprobe/loader_sets_absent_everywhere")
int BPF_KPROBE(never_loaded)
{
	return 0;
}
