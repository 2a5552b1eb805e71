// SPDX-License-Identifier: GPL-2.0
// vfs_unlink changed its arguments twice: 5.12 added `struct user_namespace *` in front (idmapped
// mounts), 6.3 turned it into `struct mnt_idmap *`. A probe that reads "the dentry" as the second
// argument reads the wrong thing on every kernel but the one it was written for.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

__u64 unlinks = 0;

// Written for 5.10: (struct inode *dir, struct dentry *dentry, struct inode **delegated_inode).
SEC("kprobe/vfs_unlink")
int BPF_KPROBE(kprobe_vfs_unlink, struct inode *dir, struct dentry *dentry)
{
	__u32 len = BPF_CORE_READ(dentry, d_name.len);

	if (len)
		__sync_fetch_and_add(&unlinks, 1);
	return 0;
}

// fentry reads the arguments through BTF: the verifier rejects a program whose argument types no
// longer match the kernel's prototype only when they are used as pointers of the wrong type.
SEC("fentry/vfs_unlink")
int BPF_PROG(fentry_vfs_unlink, struct inode *dir, struct dentry *dentry)
{
	__sync_fetch_and_add(&unlinks, 1);
	return 0;
}
