"""Triton kernels for the plaintext GPU path, each with a PyTorch reference."""
