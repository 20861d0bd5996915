"""rlhf-serve: serve a policy over gRPC and improve it online from user feedback."""

__version__ = "0.1.0"


def quiet_transformers() -> None:
    """No hub access, ever, and no progress bars in service and worker logs."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
