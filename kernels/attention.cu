// kernels/attention.cu: being written
