"""rlhf-serve: serve a policy over gRPC and improve it online from user feedback.

This package is the top floor (the `rlhf-serve` CLI, bootstrap, in-process helpers); the ground floor
that service/, workers/ and registry/ share is `rlhf_core`.
"""

__version__ = "0.1.0"
