// A tiny program with one small function, `compute`, probed by uprobe_demo.bpf.c.
// At -O0 GCC keeps `compute` out of line and every call enters it: the uprobe fires.
// At -O2 GCC inlines the static function into its only caller and emits no symbol for it:
// there is nothing to attach to, and DWARF records the call as a DW_TAG_inlined_subroutine.
//
// build: demo_O0 -O0
// build: demo_O2 -O2
#include <stdio.h>
#include <stdlib.h>

static int compute(int x)
{
	return x * 3 + 1;
}

int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : 5;
	int sum = 0;

	for (int i = 0; i < rounds; i++)
		sum += compute(i);
	printf("%d\n", sum);
	return 0;
}
