// The program that uses libdemo.so: it calls demo_run(), which calls demo_work() a few times.
// It finds the library through its RUNPATH (/mnt/user, where the harness ships the samples) unless
// LD_LIBRARY_PATH says otherwise, which the library-update scenario uses to run a private copy.
//
// build: libapp -O2 -L{out} -ldemo -Wl,-rpath,/mnt/user
#include <stdio.h>
#include <stdlib.h>

int demo_run(int rounds);

int main(int argc, char **argv)
{
	printf("%d\n", demo_run(argc > 1 ? atoi(argv[1]) : 4));
	return 0;
}
