"""Fixtures shared by the core tests."""

import socket

import pytest


@pytest.fixture
def network_attempts(monkeypatch) -> list[tuple]:
    """Refuse (and record) every DNS lookup and connection, so a test can assert none happened.

    The hub is in offline mode as under ``make test`` (HF_HUB_OFFLINE=1), whatever the caller's
    environment says, so the result does not depend on how pytest was started.
    """
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts
