// kernels/reduce.cu: being written
