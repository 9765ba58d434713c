"""Backends: where a chat completion is produced (litellm for remote APIs, or in-process)."""
