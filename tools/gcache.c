/* gcache: being written */
#include <stdio.h>
int main(void) { fprintf(stderr, "gcache: not implemented yet\n"); return 1; }
