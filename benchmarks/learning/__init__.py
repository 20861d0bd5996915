"""Simulated-annotator harness that measures whether RLHF rounds improve the served policy."""
