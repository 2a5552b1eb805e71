// Partial inlining (GCC's ipa-split): `lookup` has a cheap early exit and a big, rarely taken body.
// At -O2 GCC inlines the early exit into each caller and moves the body into `lookup.part.0`;
// there is no `lookup` symbol left. A probe on `lookup` cannot attach; a probe on `lookup.part.0`
// attaches and fires, but only for the calls that get past the early exit.
//
// build: split_O2 -O2
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char table[64][32];
static int hits;

static int lookup(const char *key)
{
	if (key == NULL || key[0] == '\0')
		return -1;
	/* The slow path: big enough that GCC will not inline it whole. */
	for (int i = 0; i < 64; i++) {
		if (strncmp(table[i], key, sizeof(table[i])) == 0) {
			hits++;
			return i;
		}
		if (table[i][0] == '\0') {
			strncpy(table[i], key, sizeof(table[i]) - 1);
			snprintf(table[i] + 16, 16, "%d", i);
			return i;
		}
	}
	fprintf(stderr, "table full at %s\n", key);
	return -2;
}

int main(int argc, char **argv)
{
	int total = 0;

	for (int i = 1; i < argc; i++)
		total += lookup(argv[i]);
	total += lookup("");
	total += lookup("alpha");
	total += lookup("beta");
	total += lookup("alpha");
	printf("%d %d\n", total, hits);
	return 0;
}
