#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention at the flash bench's four shapes (test_gpu
flash_bench), q/k/v as the models hold them ([B, L, H, D] bf16, viewed as [B, H, L, D]):
forward alone and forward + backward, per backend, median of 20 after 5. Says what an
attention kernel can reach on this GPU at these short sequences (session 11)."""
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.nn.functional as F

shapes = [("B/16 [64,197,12,64]", 64, 197, 12, False), ("B/32 [256,50,12,64]", 256, 50, 12, False),
          ("text causal [256,77,8,64]", 256, 77, 8, True), ("DINOv3 [64,201,12,64]", 64, 201, 12, False)]
backends = [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
            ("efficient", SDPBackend.EFFICIENT_ATTENTION)]


def timeit(fn, n=20, w=5):
    for _ in range(w):
        fn()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for a, b in ev:
        a.record(); fn(); b.record()
    torch.cuda.synchronize()
    t = sorted(a.elapsed_time(b) for a, b in ev)
    return t[n // 2]


for name, B, L, H, causal in shapes:
    D = 64
    q, k, v = (torch.randn(B, L, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn(B, L, H, D, device="cuda", dtype=torch.bfloat16)
    fl = 4 * B * H * L * L * D * (0.5 if causal else 1)
    for bn, be in backends:
        try:
            with sdpa_kernel([be]):
                def fwd():
                    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)
                def fb():
                    y = fwd()
                    torch.autograd.backward(y.transpose(1, 2), g)
                with torch.no_grad():
                    tf = timeit(fwd)
                tb = timeit(fb)
            print(f"sdpa {name:28s} {bn:9s} fwd {tf:.3f} ms ({fl / tf / 1e9:.0f} TFLOP/s)  fwd+bwd {tb:.3f} ms ({3.5 * fl / tb / 1e9:.0f} TFLOP/s)")
        except Exception as e:  # a backend that does not take the shape
            print(f"sdpa {name:28s} {bn:9s} unavailable: {str(e).splitlines()[0][:100]}")
