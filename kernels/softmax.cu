// kernels/softmax.cu: being written
