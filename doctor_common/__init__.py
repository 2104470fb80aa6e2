"""Shared by every nfv-doctor daemon: generated stubs (``api``), config, gRPC helpers, timeline."""

__version__ = "0.1.0"
