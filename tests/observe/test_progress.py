import io

from rich.console import Console

from bench.observe.progress import LiveProgress, Progress, progress_for
from bench.results import EndpointResult, LatencyMs


def endpoint() -> EndpointResult:
    return EndpointResult(
        name="GET flow",
        method="GET",
        path="/flows/{flow_id}",
        concurrency=4,
        requests=1000,
        errors={"503": 3},
        duration_s=1.0,
        rps=997.0,
        latency_ms=LatencyMs(min=1, mean=2, p50=2, p90=3, p99=4.5, p999=6, max=9),
    )


def test_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    progress = progress_for(console, "python-sqlite-memory")
    assert type(progress) is Progress
    with progress:
        progress.stage("starting the python server")
        assert progress.measuring("GET flow", 4) is None
        progress.measured(endpoint())
    text = out.getvalue()
    assert "python-sqlite-memory: starting the python server" in text
    assert "GET flow c=4: 997 rps, p50 2.00 ms, p99 4.50 ms, 3 errors" in text


def test_live_view_on_a_terminal_shows_the_current_rate() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    progress = progress_for(console, "python-sqlite-memory")
    assert isinstance(progress, LiveProgress)
    with progress:
        progress.stage("measuring 6 endpoints")
        update = progress.measuring("GET flow", 4)
        update(500)
        rendered = io.StringIO()
        Console(file=rendered, width=120).print(progress._render())
        assert "GET flow c=4: 500 responses" in rendered.getvalue()
        assert "rps now" not in rendered.getvalue()  # the first update includes the warmup
        update(1000)
        rendered = io.StringIO()
        Console(file=rendered, width=120).print(progress._render())
        assert "1,000 responses, " in rendered.getvalue() and "rps now" in rendered.getvalue()
        progress.measured(endpoint())
        rendered = io.StringIO()
        Console(file=rendered, width=120).print(progress._render())
    assert "997" in rendered.getvalue() and "measuring 6 endpoints" in rendered.getvalue()
