/* kernels/loss.c: being written */
