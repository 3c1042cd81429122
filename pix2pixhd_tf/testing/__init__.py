"""Anchors for tests and benchmarks (the PyTorch reference networks); nothing in the library imports them."""
