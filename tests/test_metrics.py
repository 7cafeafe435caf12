"""`GET /metrics` of a real `reelq serve` (its render workers' counts included) and JSON logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server, wait_terminal
from tests.test_hardening import wait_for

pytestmark = pytest.mark.e2e

BODY = {"model": "viduq3-turbo", "prompt": "a metered lighthouse", "duration": 1, "resolution": "540p"}


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: Server) -> Samples:
    return scrape_url(f"{server.base_url}/metrics")


def scrape_url(url: str) -> Samples:
    """Every sample of a Prometheus text answer, by name and sorted labels."""
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples carrying these labels, whatever their other labels (e.g. `reason`)."""
    return sum(v for (n, got), v in samples.items() if n == name and labels.items() <= dict(got).items())


# The deployment-wide gauges are counted from the store; the render counts come from the dispatch's workers.
@pytest.mark.scaled
def test_task_counts_histograms_and_gauges_across_the_worker_processes(make_server: Callable) -> None:
    server: Server = make_server(workers=2, REELQ_BLOCKED_TERMS="forbidden")
    with server.client() as client:
        done = client.post("/v1/vidu/videos", json=BODY).json()
        refused = client.post("/v1/vidu/videos", json={**BODY, "prompt": "a forbidden thing"}).json()
        assert wait_terminal(client, done["id"])["status"] == "completed"
        assert wait_terminal(client, refused["id"])["status"] == "failed"
        for _ in range(5):
            assert client.get(f"/v1/result/{done['id']}").status_code == 200
        assert client.get("/v1/result/video_nope").status_code == 404
        assert client.get(f"/v1/result/{done['id']}?wait=1").status_code == 200  # the routed path
    httpx.get(f"{server.base_url}/no/such/route", timeout=60)

    model = {"model": "viduq3-turbo", "engine": "synthetic"}

    def scraped_with_both() -> dict | None:
        # A render worker counts a task just after its row turns terminal (run_task), so a scrape at
        # the moment the status is seen may lag by that count: wait for both outcomes' counts.
        found = scrape(server)
        completed = value(found, "reelq_tasks_completed_total", **model)
        refused = value(found, "reelq_tasks_failed_total", **model, reason="content_policy")
        return found if completed >= 1 and refused >= 1 else None

    samples = wait_for(scraped_with_both, 10)
    assert value(samples, "reelq_tasks_created_total", **model) == 2
    assert value(samples, "reelq_tasks_completed_total", **model) == 1
    assert value(samples, "reelq_render_seconds_count", **model) == 1
    assert value(samples, "reelq_render_seconds_sum", **model) > 0
    assert value(samples, "reelq_queue_wait_seconds_count", **model) == 2
    assert value(samples, "reelq_queue_depth") == 0
    assert value(samples, "reelq_renders_running") == 0
    assert value(samples, "reelq_database_up") == 1

    read = {"method": "GET", "route": "/v1/result/{task_id}"}
    assert value(samples, "reelq_http_requests_total", **read, status="200") >= 7
    assert value(samples, "reelq_http_requests_total", **read, status="404") == 1
    count = value(samples, "reelq_http_request_duration_seconds_count", **read)
    assert count == value(samples, "reelq_http_requests_total", **read, status="200") + 1
    assert value(samples, "reelq_http_request_duration_seconds_bucket", **read, le="+Inf") == count
    buckets = [
        value(samples, "reelq_http_request_duration_seconds_bucket", **read, le=le)
        for le in ("0.0001", "0.001", "0.01", "0.1", "1.0", "+Inf")
    ]
    assert buckets == sorted(buckets)  # cumulative
    create = {"method": "POST", "route": "/v1/vidu/videos"}
    assert value(samples, "reelq_http_requests_total", **create, status="200") == 2
    assert value(samples, "reelq_http_requests_total", method="GET", route="unmatched", status="404") == 1


@pytest.mark.scaled  # the queue depth is counted from the store; the dead worker is the dispatch's
def test_counts_survive_a_worker_that_dies_and_queue_depth_counts_waiting_tasks(
    make_server: Callable,
) -> None:
    server: Server = make_server(workers=1)
    with server.client() as client:
        assert wait_terminal(client, client.post("/v1/vidu/videos", json=BODY).json()["id"])["status"] == (
            "completed"
        )
    worker_pids = [
        int(p) for p in os.listdir("/proc") if p.isdigit() and _is_worker_of(int(p), server.process.pid)
    ]
    assert len(worker_pids) == 1
    completed = {"model": "viduq3-turbo", "engine": "synthetic"}
    # Counted once written (the worker writes the count just after the row turns completed), then killed.
    wait_for(lambda: value(scrape(server), "reelq_tasks_completed_total", **completed) == 1, 10)
    os.kill(worker_pids[0], signal.SIGKILL)  # its counts live on in its files
    samples = scrape(server)
    assert value(samples, "reelq_tasks_completed_total", **completed) == 1

    idle: Server = make_server(workers=0)
    with idle.client() as client:
        queued = [client.post("/v1/vidu/videos", json=BODY).json()["id"] for _ in range(3)]
        assert client.get(f"/v1/result/{queued[0]}?wait=1").json()["status"] == "queued"  # held 1 s
    samples = scrape(idle)
    assert value(samples, "reelq_queue_depth") == 3
    read = {"method": "GET", "route": "/v1/result/{task_id} (long-poll)"}  # apart from status reads
    assert value(samples, "reelq_http_request_duration_seconds_bucket", **read, le="0.5") == 0
    assert value(samples, "reelq_http_request_duration_seconds_bucket", **read, le="2.5") == 1


def _is_worker_of(pid: int, parent: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read()  # noqa: SIM115
    except OSError:
        return False
    return int(fields[1]) == parent and b"reelq.worker.process" in cmdline


@pytest.mark.scaled  # the lines about a task come from the dispatch's workers (Celery's scaled out)
def test_json_logs_name_the_task_on_every_line_about_one(make_server: Callable) -> None:
    server: Server = make_server(workers=1, REELQ_LOG_FORMAT="json", REELQ_LOG_LEVEL="INFO")
    with server.client() as client:
        task = client.post("/v1/vidu/videos", json=BODY).json()
        assert wait_terminal(client, task["id"])["status"] == "completed"
    lines = wait_for(lambda: [ln for ln in server.log().splitlines() if task["id"] in ln], 10)
    entries = [json.loads(line) for line in server.log().splitlines() if line.strip()]  # every line is JSON
    assert {"ts", "level", "logger", "message", "pid"} <= set(entries[0])
    assert any(e["logger"].startswith("uvicorn") for e in entries)  # uvicorn's own lines too
    about = [json.loads(line) for line in lines]
    assert about and all(e["task_id"] == task["id"] for e in about)


def test_json_logs_carry_a_librarys_python_warnings_as_json_lines_too() -> None:
    """A library's warnings.warn (Celery's about running as root) is a JSON line, not bare text."""
    code = (
        "import warnings\n"
        "from reelq.config import load_settings\n"
        "from reelq.logs import setup_logging\n"
        "setup_logging(load_settings(log_format='json'))\n"
        "warnings.warn('a library says so\\nover two lines', UserWarning)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REELQ_", "PYTHONWARNINGS"))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    entries = [json.loads(line) for line in done.stderr.splitlines()]  # every line is JSON
    assert [(e["level"], e["logger"]) for e in entries] == [("WARNING", "py.warnings")]
    assert "a library says so\nover two lines" in entries[0]["message"]
