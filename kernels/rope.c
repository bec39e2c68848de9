/* kernels/rope.c: being written */
