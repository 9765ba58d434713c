"""The OpenAI-compatible compressing gateway and the local runtime."""
