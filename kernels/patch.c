/* kernels/patch.c: being written */
