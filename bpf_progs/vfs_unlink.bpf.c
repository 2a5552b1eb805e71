// SPDX-License-Identifier: GPL-2.0
// A function whose arguments move: vfs_unlink() (fs/namei.c).
//
//   5.10:  vfs_unlink(struct inode *dir, struct dentry *dentry, struct inode **delegated_inode)
//   5.12:  vfs_unlink(struct user_namespace *mnt_userns, struct inode *dir, struct dentry *dentry, ...)
//          (6521f8917082, "namei: prepare for idmapped mounts")
//   6.3:   vfs_unlink(struct mnt_idmap *idmap, struct inode *dir, struct dentry *dentry, ...)
//          (abf08576afe3, "fs: port vfs_*() helpers to struct mnt_idmap")
//
// A probe written for 5.10 reads the dentry as the 2nd argument. On 6.1 that argument is the
// directory's inode:
//   - the kprobe still loads, attaches and fires, it just reads garbage (bpf_probe_read_kernel of
//     an inode as if it were a dentry): only the prototype check against the 5.10 baseline shows it;
//   - the fentry program is typed by the kernel's BTF, not by its own declaration: the verifier
//     sees a `struct inode *` and rejects the load of `dentry->d_name.len` (a partial read of
//     inode.i_op), so the drift shows as a load failure on 6.1.
// The *_core programs choose the argument with CO-RE: 5.12 added vfsmount.mnt_userns along with the
// argument, and 6.3 replaced both by struct mnt_idmap, so either of them means "the dentry is the
// 3rd argument".
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

// Flavors (libbpf ignores the ___suffix when it matches types): present from 5.12 to 6.2, and from 6.3.
struct vfsmount___v512 {
	struct user_namespace *mnt_userns;
} __attribute__((preserve_access_index));

struct mnt_idmap___v63 {
	int unused;
} __attribute__((preserve_access_index));

__u64 unlinks = 0;
__u64 name_len = 0;	// the last dentry name length seen: wrong on 6.1 for the blind probes

static __always_inline int dentry_is_third(void)
{
	return bpf_core_field_exists(struct vfsmount___v512, mnt_userns) ||
	       bpf_core_type_exists(struct mnt_idmap___v63);
}

// Blind, written for 5.10: on 6.1 `dentry` is really the parent directory's inode.
SEC("kprobe/vfs_unlink")
int BPF_KPROBE(kprobe_vfs_unlink, struct inode *dir, struct dentry *dentry)
{
	name_len = BPF_CORE_READ(dentry, d_name.len);
	__sync_fetch_and_add(&unlinks, 1);
	return 0;
}

// Blind fentry: direct (BTF-checked) access, rejected by the verifier on 6.1.
SEC("fentry/vfs_unlink")
int BPF_PROG(fentry_vfs_unlink, struct inode *dir, struct dentry *dentry)
{
	name_len = dentry->d_name.len;
	__sync_fetch_and_add(&unlinks, 1);
	return 0;
}

// Guarded: the dentry is PARM2 on 5.10/5.11 and PARM3 from 5.12 on. Both registers are read first
// and kept apart by barrier_var(): otherwise clang folds "PARM3 or PARM2" into one load from pt_regs
// at a computed offset, which the verifier refuses ("dereference of modified ctx ptr").
SEC("kprobe/vfs_unlink")
int kprobe_vfs_unlink_core(struct pt_regs *ctx)
{
	unsigned long second = PT_REGS_PARM2(ctx), third = PT_REGS_PARM3(ctx);
	struct dentry *dentry;

	barrier_var(second);
	barrier_var(third);
	dentry = (struct dentry *)(dentry_is_third() ? third : second);
	name_len = BPF_CORE_READ(dentry, d_name.len);
	__sync_fetch_and_add(&unlinks, 1);
	return 0;
}

// Guarded fentry: ctx[] holds the arguments, but a load from ctx must have a constant offset (clang
// turns "ctx[2] or ctx[1]" into one load at a computed offset, "dereference of modified ctx ptr"),
// and 5.10's verifier refuses even a plain read of ctx[2] there (a `struct inode **`, not a pointer
// to a struct). So the slot is copied with bpf_probe_read_kernel, and the dentry read through CO-RE.
SEC("fentry/vfs_unlink")
int BPF_PROG(fentry_vfs_unlink_core)
{
	struct dentry *dentry = NULL;

	bpf_probe_read_kernel(&dentry, sizeof(dentry), &ctx[dentry_is_third() ? 2 : 1]);
	name_len = BPF_CORE_READ(dentry, d_name.len);
	__sync_fetch_and_add(&unlinks, 1);
	return 0;
}
