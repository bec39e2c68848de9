/* kernels/dropout.c: being written */
