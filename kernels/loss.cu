// kernels/loss.cu: being written
