/* kernels/embedding.c: being written */
