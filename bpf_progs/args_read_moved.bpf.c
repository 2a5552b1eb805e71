// SPDX-License-Identifier: GPL-2.0
// A read parameter that moved between 5.10 and 6.1.
//
// vfs_unlink(struct inode *dir, struct dentry *dentry, ...) on 5.10 became
// vfs_unlink(struct user_namespace *mnt_userns, struct inode *dir, struct dentry *dentry, ...) in 5.12
// (6521f8917082). This fentry program reads its 2nd context slot as the dentry: on 6.1 that slot is
// the directory's inode. Only the dentry pointer itself is read (not through it), so the verifier
// accepts it; the prototype check names the moved parameter it reads.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

__u64 last_dentry = 0;

SEC("fentry/vfs_unlink")
int BPF_PROG(read_dentry, void *dir, void *dentry)
{
	last_dentry = (__u64)dentry;
	return 0;
}
