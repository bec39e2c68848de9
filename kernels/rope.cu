// kernels/rope.cu: being written
