/* kernels/attention.c: being written */
