// kernels/patch.cu: being written
