// kernels/dropout.cu: being written
