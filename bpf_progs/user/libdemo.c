// A shared library in two versions. libdemo.v2.so inserts functions in front of `demo_work`, so the
// function's offset in the file moves: a uprobe attached by offset (as a tool that resolved the
// symbol once does) is left pointing into the middle of `demo_pad_*` after the library is updated.
// The inserted functions are never called, so the stale breakpoint is never executed.
//
// build: libdemo.so -O2 -shared -fPIC
// build: libdemo.v2.so -O2 -shared -fPIC -DLIBDEMO_V2
#include <stdint.h>

#ifdef LIBDEMO_V2
#define PAD(n)                                                                   \
	__attribute__((noinline, used)) uint64_t demo_pad_##n(uint64_t x)        \
	{                                                                        \
		for (int i = 0; i < 8; i++)                                      \
			x = x * 6364136223846793005ULL + 1442695040888963407ULL; \
		return x ^ (x >> 29);                                            \
	}
PAD(1) PAD(2) PAD(3) PAD(4) PAD(5) PAD(6) PAD(7) PAD(8)
#endif

__attribute__((noinline)) int demo_work(int x)
{
	return x * 7 + 3;
}

int demo_run(int rounds)
{
	int sum = 0;

	for (int i = 0; i < rounds; i++)
		sum += demo_work(i);
	return sum;
}
