// SPDX-License-Identifier: GPL-2.0
// A kprobe that attaches everywhere and fires on one kernel only: lru_cache_add().
//
// On 5.10 every page that joins an LRU list goes through lru_cache_add() (mm/swap.c): anonymous
// faults (lru_cache_add_inactive_or_unevictable), tmpfs and page-cache pages; a kprobe on it runs
// all the time. 5.16 moved the LRU to folios ("mm/swap: Add folio_add_lru()" and the series around
// it): the callers call folio_add_lru(), and lru_cache_add() stays as a compatibility wrapper
// (mm/folio-compat.c) for the few callers not converted yet. On 6.1 the symbol
// is there, traceable, and the kprobe attaches; the workload's pages never go through it: it never
// fires. Only fire by difference shows it: fired on 5.10, never on 6.1.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

__u64 pages = 0;

// Attaches on 5.10 and 6.1; fires on 5.10 only.
SEC("kprobe/lru_cache_add")
int BPF_KPROBE(kprobe_lru_cache_add)
{
	__sync_fetch_and_add(&pages, 1);
	return 0;
}

// What the callers call since 5.16: not on 5.10.
SEC("kprobe/folio_add_lru")
int BPF_KPROBE(kprobe_folio_add_lru)
{
	__sync_fetch_and_add(&pages, 1);
	return 0;
}
