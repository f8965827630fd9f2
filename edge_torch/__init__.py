"""The torch-CUDA backend, kept out of edge_runtime (the device package never imports torch): the runtime's
backend table names edge_torch.torch_cuda, imported only when `--backend torch-cuda` is chosen."""
