// kernels/elementwise.cu: being written
