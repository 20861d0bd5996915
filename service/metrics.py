"""Prometheus metric families of the serving process, in one place.

Each server owns a CollectorRegistry (several servers can live in one test process). Naming
follows Prometheus conventions (base units, `_total`, `_seconds`); the gRPC families follow
go-grpc-prometheus so that stock dashboards work.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        grpc_labels = ["grpc_service", "grpc_method", "grpc_type"]
        self.grpc_started = Counter("grpc_server_started_total", "RPCs started on the server.", grpc_labels, registry=r)
        self.grpc_handled = Counter("grpc_server_handled_total", "RPCs completed, by status code.",
                                    grpc_labels + ["grpc_code"], registry=r)
        self.grpc_seconds = Histogram("grpc_server_handling_seconds", "RPC handling time, by status code.",
                                      grpc_labels + ["grpc_code"], buckets=LATENCY_BUCKETS, registry=r)
        self.grpc_msg_sent = Counter("grpc_server_msg_sent_total", "Stream messages sent.", grpc_labels, registry=r)
        v = ["model_version"]
        self.ttft = Histogram("rlhf_time_to_first_token_seconds", "Enqueue to first generated token.", v,
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("rlhf_inter_token_latency_seconds", "Time between consecutive tokens of a candidate.",
                             v, buckets=TOKEN_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("rlhf_e2e_request_latency_seconds", "Generate/GenerateStream latency, end to end.",
                             v, buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("rlhf_queue_time_seconds", "Time a request waited to join the running batch.", v,
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.generation_tokens = Counter("rlhf_generation_tokens_total", "Generated tokens.", v, registry=r)
        self.prefill_tokens = Counter("rlhf_prefill_tokens_total",
                                      "Prompt tokens run through the model in prefill (a prompt shared by several "
                                      "candidates runs once).", v, registry=r)
        self.prompt_tokens = Counter("rlhf_prompt_tokens_total", "Prompt tokens processed (per candidate).", v,
                                     registry=r)
        self.prompt_cache_queries = Counter("rlhf_prompt_cache_query_tokens_total",
                                            "Tokens of the distinct prompts of prefills looked up in the prompt cache.",
                                            v, registry=r)
        self.prompt_cache_hits = Counter("rlhf_prompt_cache_hit_tokens_total",
                                         "Of those, tokens whose keys and values were copied from the prompt cache "
                                         "(whole prompts and shared prefixes), not run.", v, registry=r)
        self.prompt_cache_bytes = Gauge("rlhf_prompt_cache_bytes", "Bytes held by the prompt cache's entries.",
                                        registry=r)
        self.requests_finished = Counter("rlhf_request_success_total", "Finished candidates by finish reason.",
                                         v + ["finish_reason"], registry=r)
        self.batch_size = Histogram("rlhf_batch_size", "Candidates decoded together in one decoding step.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("rlhf_queue_depth", "Generate requests waiting for a batch.", registry=r)
        self.running = Gauge("rlhf_num_sequences_running", "Candidates being decoded now.", registry=r)
        self.tokens_in_flight = Gauge("rlhf_tokens_in_flight", "Tokens held in the KV cache of running candidates.",
                                      registry=r)
        self.feedback = Counter("rlhf_feedback_total", "Accepted feedback items (duplicates excluded).",
                                ["kind", "model_version"], registry=r)
        self.feedback_duplicates = Counter("rlhf_feedback_duplicates_total",
                                           "Feedback retries answered from the idempotency key.", registry=r)
        self.feedback_rate_limited = Counter("rlhf_feedback_rate_limited_total",
                                             "Feedback refused by the per-user rate limit.", registry=r)
        self.generation_records_dropped = Counter(
            "rlhf_generation_records_dropped_total",
            "Responses served but not recorded (Redis down or full): they cannot be rated.", registry=r)
        self.model_info = Gauge("rlhf_model_info", "1 for the model version being served.", v, registry=r)
        self.swaps = Counter("rlhf_model_swaps_total", "Hot-swaps to a new current version.", registry=r)
        self.swap_failures = Counter("rlhf_model_swap_failures_total",
                                     "Versions refused at hot-swap (checksum mismatch, load error).", registry=r)
        self.swap_seconds = Histogram("rlhf_model_swap_duration_seconds", "Load and verify time of a hot-swap.",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.swap_retries = Counter("rlhf_model_swap_retries_total",
                                    "Retries of a refused version (pointer set to it again, or its files changed).",
                                    registry=r)
        self.pointer_mismatch = Gauge("rlhf_model_pointer_mismatch",
                                      "1 while the served version differs from the deployment's current-version "
                                      "pointer (refused, loading, or serving a fallback).", registry=r)
        self.model_fallback = Gauge("rlhf_model_fallback",
                                    "1 while serving another version because the pointer's could not be loaded.",
                                    registry=r)
        self.model_events_ignored = Counter("rlhf_model_events_ignored_total",
                                            "Model-event messages ignored (not a version name).", registry=r)
        # LoRA versions (issue 7): read from the model pool at scrape time (watch_pool)
        self.base_copies = Gauge("rlhf_model_base_copies", "Full-weight models resident (LoRA versions share one).",
                                 registry=r)
        self.load_bytes = Gauge("rlhf_model_last_load_bytes",
                                "Bytes of weights read by the latest LoRA adapter load (a swap or a pin).", registry=r)
        self.adapter_load_seconds = Gauge("rlhf_model_last_adapter_load_seconds",
                                          "Seconds the latest LoRA adapter load took (working copy included).",
                                          registry=r)
        self._served: str | None = None

    def watch_pool(self, pool) -> None:
        """Export the pool's base-copy count and its adapter bank's latest load (LoRA versions)."""
        self.base_copies.set_function(lambda: pool.base_copies)
        self.load_bytes.set_function(lambda: pool.adapters.last_load_bytes)
        self.adapter_load_seconds.set_function(lambda: pool.adapters.last_load_seconds)

    def set_served_version(self, version: str) -> None:
        if self._served is not None:
            self.model_info.remove(self._served)
        self.model_info.labels(version).set(1)
        self._served = version

    def observe_job(self, version: str, job) -> None:
        """Token and latency figures of a finished job (called once, when its last candidate ends)."""
        firsts = [r.first_token_at for r in job.rows if r.first_token_at]
        if firsts:
            self.ttft.labels(version).observe(min(firsts) - job.enqueued_at)
        for row in job.rows:
            times = row.token_times
            for a, b in zip(times, times[1:]):
                self.itl.labels(version).observe(b - a)
            self.generation_tokens.labels(version).inc(len(row.tokens))
            self.prompt_tokens.labels(version).inc(len(row.prompt_ids))
            self.requests_finished.labels(version, row.finish or "unknown").inc()

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Starts the /metrics HTTP endpoint; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return server.server_port

    def close(self) -> None:
        http = getattr(self, "_http", None)
        if http is not None:
            http.shutdown()
            http.server_close()
