"""The request accumulators render as the Prometheus histogram/counter they replace."""

from __future__ import annotations

from altostack.api.metrics import ApiMetrics


def test_histogram_buckets_are_cumulative_with_le_bounds_and_a_sum() -> None:
    m = ApiMetrics()
    for seconds in (0.001, 0.002, 0.3, 42.0):  # 0.001 is in the le="0.001" bucket
        m.observe("GET", "/v1/x", 200, seconds)
    m.observe("GET", "/v1/x", 404, 0.004)
    text = m.render().decode()
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in samples}
    prefix = 'alto_http_request_duration_seconds_bucket{le="%s",method="GET",route="/v1/x"}'
    assert lines[prefix % "0.001"] == 1
    assert lines[prefix % "0.0025"] == 2
    assert lines[prefix % "0.005"] == 3
    assert lines[prefix % "0.5"] == 4
    assert lines[prefix % "10.0"] == 4
    assert lines[prefix % "+Inf"] == 5
    assert lines['alto_http_request_duration_seconds_count{method="GET",route="/v1/x"}'] == 5
    total = lines['alto_http_request_duration_seconds_sum{method="GET",route="/v1/x"}']
    assert abs(total - 42.307) < 1e-9
    assert lines['alto_http_requests_total{method="GET",route="/v1/x",status="200"}'] == 4
    assert lines['alto_http_requests_total{method="GET",route="/v1/x",status="404"}'] == 1
