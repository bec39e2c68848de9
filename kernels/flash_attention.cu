// kernels/flash_attention.cu: being written
