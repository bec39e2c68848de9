// kernels/norm.cu: being written
