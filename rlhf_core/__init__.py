"""The ground floor of rlhf-serve: settings, the Redis key layout, Celery task names and the feedback-log
format, shared by registry/, service/ and workers/ (and the CLI above them).

It imports only the generated contract (`rlhf.v1`) and the pure training defaults (`training/config.py`).
"""


def quiet_transformers() -> None:
    """No hub access, ever, and no progress bars in service and worker logs."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
