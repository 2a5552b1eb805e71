// SPDX-License-Identifier: GPL-2.0
// blk_account_io_start is a global function on 5.10 and is inlined into its callers on 6.1
// (it disappears from kallsyms). The block:block_io_start tracepoint replaces it from 6.5; the
// block:block_rq_issue tracepoint exists on every kernel here.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

__u64 ios = 0;

SEC("kprobe/blk_account_io_start")
int BPF_KPROBE(kprobe_blk_account_io_start)
{
	__sync_fetch_and_add(&ios, 1);
	return 0;
}

SEC("tp/block/block_rq_issue")
int tp_block_rq_issue(void *ctx)
{
	__sync_fetch_and_add(&ios, 1);
	return 0;
}
