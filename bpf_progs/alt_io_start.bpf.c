// SPDX-License-Identifier: GPL-2.0
// One job, "a block request starts", done by several programs of which a loader picks one that
// works (as libbpf-tools' biosnoop and biotop do): the sidecar names them as alternatives.
//
// blk_account_io_start() is a global function on 5.10: fentry and kprobe on it work. 5.17 made it a
// static function of block/blk-mq.c that GCC inlines (450b7879e345): neither works on 6.1. The
// block:block_io_start tracepoint made for this accounting point exists from 6.5 (5a80bd075f3b),
// and block:block_rq_issue is on every kernel here. The group passes on every kernel: through
// fentry_io_start, kprobe_io_start and tp_rq_issue on 5.10 (fentry where trampolines work), through
// tp_rq_issue only on 6.1.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

__u64 starts = 0;

SEC("fentry/blk_account_io_start")
int BPF_PROG(fentry_io_start)
{
	__sync_fetch_and_add(&starts, 1);
	return 0;
}

SEC("kprobe/blk_account_io_start")
int BPF_KPROBE(kprobe_io_start)
{
	__sync_fetch_and_add(&starts, 1);
	return 0;
}

SEC("tp_btf/block_io_start")
int BPF_PROG(tp_btf_io_start)
{
	__sync_fetch_and_add(&starts, 1);
	return 0;
}

SEC("tp/block/block_rq_issue")
int tp_rq_issue(void *ctx)
{
	__sync_fetch_and_add(&starts, 1);
	return 0;
}
