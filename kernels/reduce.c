/* kernels/reduce.c: being written */
