"""rlhf-serve: serve a policy over gRPC and improve it online from user feedback."""

__version__ = "0.1.0"
