// SPDX-License-Identifier: GPL-2.0
// A kprobe on a function that the compiler inlines away, and the tracepoints that replace it.
//
// blk_account_io_start() is a global function on 5.10 (block/blk-core.c); a kprobe on it sees every
// request that enters I/O accounting. 5.16 made its hot path inline (be6bfe36db17, "block: inline
// hot paths of blk_account_io_*()") and 5.17 moved it into block/blk-mq.c as a static function
// (450b7879e345, "block: move blk_account_io_{start,done} to blk-mq.c"), where GCC inlines it: on
// 6.1 it is gone from kallsyms and the kprobe fails to attach (ENOENT), on x86_64 and arm64 alike.
// block:block_rq_issue fires on every kernel here; block:block_io_start, the tracepoint made for
// exactly this accounting point, exists only from 6.5 (5a80bd075f3b, "block: introduce
// block_io_start/block_io_done tracepoints").
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

__u64 ios = 0;

// Attaches on 5.10 only.
SEC("kprobe/blk_account_io_start")
int BPF_KPROBE(kprobe_blk_account_io_start)
{
	__sync_fetch_and_add(&ios, 1);
	return 0;
}

// The stable replacement: on every kernel of the matrix.
SEC("tp/block/block_rq_issue")
int tp_block_rq_issue(void *ctx)
{
	__sync_fetch_and_add(&ios, 1);
	return 0;
}

// The exact replacement, from 6.5: not there on 5.10 or 6.1.
SEC("tp/block/block_io_start")
int tp_block_io_start(void *ctx)
{
	__sync_fetch_and_add(&ios, 1);
	return 0;
}
