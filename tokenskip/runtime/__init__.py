"""The local runtime: serves Hugging Face models in-process (continuous batching, lossless self-speculative decoding, adaptive early exit, Triton kernels) and generates for the offline pipelines."""
