"""Celery workers: scheduled reward-model and PPO rounds, weight publishing."""
