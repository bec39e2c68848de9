// kernels/embedding.cu: being written
