/* kernels/elementwise.c: being written */
