"""Model-server metrics text as the runtimes expose it, for the load-signal tests."""

from __future__ import annotations

from collections.abc import Sequence

# vLLM's default time-to-first-token buckets (vllm/v1/metrics/loggers.py).
VLLM_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0, 2560.0,
)  # fmt: skip


def vllm_text(
    *,
    waiting: float = 0,
    running: float = 0,
    kv: float = 0.0,
    success: float = 0,
    ttft: Sequence[float] = (),
    model: str = "support-llm",
    kv_name: str = "vllm:kv_cache_usage_perc",
    engines: int = 1,
) -> str:
    """The text `vllm serve` answers on /metrics (V1 engine), for `ttft` observations so far (split evenly over
    `engines`, as data parallelism reports them)."""
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"# HELP {kv_name} KV-cache usage. 1 means 100 percent usage.",
        f"# TYPE {kv_name} gauge",
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
        "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.",
        "# TYPE vllm:time_to_first_token_seconds histogram",
    ]
    body: list[str] = []
    for engine in range(engines):
        labels = f'engine="{engine}",model_name="{model}"'
        share = [t for i, t in enumerate(ttft) if i % engines == engine]
        body += [
            f"vllm:num_requests_running{{{labels}}} {running / engines}",
            f"vllm:num_requests_waiting{{{labels}}} {waiting / engines}",
            f"{kv_name}{{{labels}}} {kv}",
            f'vllm:request_success_total{{{labels},finished_reason="stop"}} {success / engines}',
            f'vllm:request_success_total{{{labels},finished_reason="length"}} 0.0',
        ]
        for bound in VLLM_TTFT_BUCKETS:
            count = float(sum(t <= bound for t in share))
            body.append(f'vllm:time_to_first_token_seconds_bucket{{{labels},le="{bound}"}} {count}')
        body += [
            f'vllm:time_to_first_token_seconds_bucket{{{labels},le="+Inf"}} {float(len(share))}',
            f"vllm:time_to_first_token_seconds_count{{{labels}}} {float(len(share))}",
            f"vllm:time_to_first_token_seconds_sum{{{labels}}} {float(sum(share))}",
        ]
    # Families are grouped as prometheus_client writes them: HELP/TYPE then that family's samples.
    out: list[str] = []
    families = [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        kv_name,
        "vllm:request_success_total",
        "vllm:time_to_first_token_seconds",
    ]
    for family in families:
        out += [line for line in lines if line.split(" ")[2] == family]
        out += [line for line in body if line.startswith(family + "{") or line.startswith(family + "_")]
    return "\n".join(out) + "\n"


SGLANG_SAMPLE = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.42
# HELP sglang:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE sglang:time_to_first_token_seconds histogram
sglang:time_to_first_token_seconds_bucket{le="0.1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 10.0
sglang:time_to_first_token_seconds_bucket{le="0.5",model_name="meta-llama/Llama-3.1-8B-Instruct"} 30.0
sglang:time_to_first_token_seconds_bucket{le="1.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 40.0
sglang:time_to_first_token_seconds_bucket{le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 40.0
sglang:time_to_first_token_seconds_sum{model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0
sglang:time_to_first_token_seconds_count{model_name="meta-llama/Llama-3.1-8B-Instruct"} 40.0
"""

TGI_SAMPLE = """\
# TYPE tgi_queue_size gauge
tgi_queue_size 5
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 3
# TYPE tgi_request_duration histogram
tgi_request_duration_bucket{le="0.5"} 2
tgi_request_duration_bucket{le="1"} 9
tgi_request_duration_bucket{le="+Inf"} 11
tgi_request_duration_sum 8.5
tgi_request_duration_count 11
"""
