/* kernels/norm.c: being written */
