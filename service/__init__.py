"""The gRPC serving process: generation, feedback intake, hot-swap, auth, metrics."""
