"""Serving a request: its plan, its exchange, the chat service, pass-through, batching."""
