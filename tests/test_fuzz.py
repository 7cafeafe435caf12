"""Hostile input: schemathesis against the running server's own OpenAPI document.

One `reelq serve --workers 0` for the module (created tasks stay queued: no render costs CPU),
plus one video rendered beforehand by a short-lived `reelq worker`, so the download operations
are fuzzed against a real file and a valid signed link, not only against 404s.

The schemathesis CLI runs in a subprocess (its warnings cannot trip pytest's
`filterwarnings = error`), bounded and deterministic: `--generation-deterministic`,
`--max-examples` per operation, one worker, no example database. Checks: every check
schemathesis has (no 5xx, documented status codes, content types, headers, response schemas,
negative data rejected, auth enforced, unsupported methods answered 405 with `Allow`, one key
never reading another's task) except `positive_data_acceptance`, because some rules cannot be
said in JSON Schema (a data URI that is not an image, last_image without first_image), so a
schema-valid body can rightly be refused with 400.

The hooks at the end of this module are loaded by that subprocess (`SCHEMATHESIS_HOOKS`), never
by pytest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from tests.conftest import SCALED, Server, create_key, free_port, reelq_env

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
HOOKS_MODULE = "tests.test_fuzz"  # this file, as the schemathesis process imports it
# The embedded pass fuzzes in depth. The scaled pass runs the same operations and checks against
# PostgreSQL and S3, where what can differ is the backend's answer to a hostile value (a NUL byte,
# an over-long string, a forged cursor), which the coverage phase's boundary values and a smaller
# fuzzing phase reach: a third of the examples, a third of the CPU of the longest test in CI.
MAX_EXAMPLES = 30 if SCALED else 80
EXCLUDED_CHECKS = "positive_data_acceptance"
# The run reports its own count (about 900 with 80 examples); well below it means an operation or a
# phase silently stopped being exercised.
MIN_CASES = 300 if SCALED else 600
# What the document must contain (more is fine: every operation in it is fuzzed).
REQUIRED_OPERATIONS = {
    ("POST", "/v1/vidu/videos"),
    ("GET", "/v1/result/{task_id}"),
    ("GET", "/v1/files/{filename}"),
    ("HEAD", "/v1/files/{filename}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
}
AUTHENTICATED = r"^/v1/(?!files/)"
# Range values the download operations draw half the time (the other half are generated).
RANGES = [
    "bytes=0-99",
    "bytes=-5",
    "bytes=100-",
    "bytes=0-0,-1",
    "bytes=0-1,5-9",
    "bytes=0-",
    "bytes=5-1",
    "bytes=99999999999-",
]
# BUG (reported, not fixed here): a malformed Range header answers 400 and an unsatisfiable one
# 416, both `text/plain` from Starlette's FileResponse, not the SPEC §4 JSON envelope that the
# document declares. While True, the fuzz run drops exactly those failures (see
# `filter_failure` below) and test_range_errors_use_the_error_envelope is an expected failure;
# once the server is fixed that test passes unexpectedly (strict xfail): set this to False.
KNOWN_RANGE_ENVELOPE_BUG = False


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("fuzz")
    # The tasks never finish here (no workers), so `?wait=N` would hold a request N seconds:
    # the server clamps long-polls to 50 ms (REELQ_MAX_LONG_POLL; the clamp is tested in test_api).
    server = Server(home=home, port=free_port(), env=reelq_env(home, REELQ_MAX_LONG_POLL="0.05"))
    server.new_key("alice")
    server.new_key("bob")
    server.start(workers=0)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def video_url(fuzz_server: Server) -> str:
    """A completed task's signed link, rendered by a `reelq worker` that is stopped afterwards.

    Its task belongs to a key the fuzzer does not hold: the fuzzer lists, cancels and deletes its
    own tasks (links from the list to DELETE), and must not delete the one the download is fuzzed on.
    """
    with fuzz_server.client(create_key(fuzz_server.home, "fixture")) as client:
        body = {"model": "viduq3-turbo", "prompt": "fuzz fixture", "duration": 1, "resolution": "540p"}
        task = client.post("/v1/vidu/videos", json=body).json()
        worker = subprocess.Popen(
            [sys.executable, "-m", "reelq", "worker"],
            env=fuzz_server.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                task = client.get(f"/v1/result/{task['id']}", params={"wait": 5}).json()
                if task["status"] in ("completed", "failed"):
                    break
        finally:
            worker.terminate()
            worker.wait(timeout=60)
    assert task["status"] == "completed", task
    return task["video_url"]


def schemathesis_binary() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert found, "schemathesis is a test dependency (pip install -e '.[test]')"
    return found


def write_config(directory: Path, server: Server, video_url: str) -> Path:
    """schemathesis.toml: two identities (one may not read the other's tasks) and the real link."""
    auth = {
        "auth": [
            {"name": name, "fixedHeaders": [{"name": "Authorization", "value": f"Bearer {key}"}]}
            for name, key in zip(("alice", "bob"), server.keys, strict=True)
        ]
    }
    (directory / "wfc-auth.json").write_text(json.dumps(auth))
    config = f"""
[auth.wfc]
path = "{directory / "wfc-auth.json"}"
user = "alice"
peers = ["alice", "bob"]
"""
    if video_url.startswith(server.base_url):  # our own signed link (scaled out: a presigned S3 one)
        config += files_config(video_url)
    path = directory / "schemathesis.toml"
    path.write_text(config)
    return path


def files_config(video_url: str) -> str:
    """The real link's parts, for the fuzzer to reach the file whole and in ranges."""
    link = urlsplit(video_url)
    query = dict(parse_qsl(link.query))
    return f"""
[dictionaries.link-filename]
values = [{json.dumps(link.path.rsplit("/", 1)[1])}]
[dictionaries.link-expires]
values = [{json.dumps(query["expires"])}]
[dictionaries.link-signature]
values = [{json.dumps(query["signature"])}]
[dictionaries.ranges]
values = {json.dumps(RANGES)}

[[operations]]
include-path = "/v1/files/{{filename}}"
[operations.parameters]
"path.filename" = {{ dictionary = "link-filename", probability = 0.8 }}
"query.expires" = {{ dictionary = "link-expires", probability = 0.9 }}
"query.signature" = {{ dictionary = "link-signature", probability = 0.9 }}
"header.Range" = {{ dictionary = "ranges", probability = 0.5 }}
"""


def run_schemathesis(
    server: Server, workdir: Path, *args: str, config: Path | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], Counter[int]]:
    """Run the CLI; the JSON run report, and how many responses each HTTP status got."""
    report, events = workdir / "report.json", workdir / "events.ndjson"
    command = [schemathesis_binary(), "--no-color"]
    if config is not None:
        command += ["--config-file", str(config)]
    command += [
        "run", f"{server.base_url}/openapi.json",
        "--generation-deterministic", "--no-shrink",
        "--workers", "1", "--request-timeout", "30",
        "--report", "json,ndjson", "--report-json-path", str(report), "--report-ndjson-path", str(events),
        *args,
    ]  # fmt: skip
    env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS_MODULE, "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=workdir, env=env)
    output = result.stdout + result.stderr
    assert report.is_file() and report.stat().st_size, output[-6000:]
    return result, json.loads(report.read_text()), response_statuses(events)


def response_statuses(events: Path) -> Counter[int]:
    """How many recorded responses (one per case) had each HTTP status, from the run's NDJSON log."""
    statuses: Counter[int] = Counter()
    for line in events.read_text().splitlines():
        finished = json.loads(line).get("ScenarioFinished")
        for interaction in ((finished or {}).get("recorder") or {}).get("interactions", {}).values():
            if interaction.get("response"):
                statuses[interaction["response"]["status_code"]] += 1
    return statuses


def document_operations(server: Server) -> set[tuple[str, str]]:
    document = httpx.get(f"{server.base_url}/openapi.json", timeout=10).json()
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


# Every operation, creates, reads, lists, cancels, deletes and downloads included: what the store and the
# video storage answer (presigned S3 links scaled out) is fuzzed too.
@pytest.mark.scaled
@pytest.mark.timeout(660)  # bounded by the schemathesis run's own 600 s; a loaded CI machine nears 300
def test_no_5xx_and_every_answer_matches_the_document(
    fuzz_server: Server, video_url: str, tmp_path: Path
) -> None:
    operations = document_operations(fuzz_server)
    assert operations >= REQUIRED_OPERATIONS
    config = write_config(tmp_path, fuzz_server, video_url)
    result, report, statuses = run_schemathesis(
        fuzz_server, tmp_path,
        "--checks", "all", "--exclude-checks", EXCLUDED_CHECKS, "--max-examples", str(MAX_EXAMPLES),
        config=config,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    generated = report["test_cases"]["generated"]
    summary = {
        "generated": generated,
        "max_examples_per_operation": MAX_EXAMPLES,
        "operations": report["operations"]["tested"],
        "recorded_responses": sum(statuses.values()),
        "statuses": {str(code): count for code, count in sorted(statuses.items())},
        "seconds": round(report["running_time"], 1),
    }
    (tmp_path / "fuzz-cases.json").write_text(json.dumps(summary, indent=2))
    print(f"schemathesis: {generated} cases generated, all passed; {json.dumps(summary)}")
    assert report["operations"]["tested"] == report["operations"]["total"] == len(operations)
    assert report["test_cases"]["errored"] == 0 and not report["errors"]
    assert generated >= MIN_CASES
    assert not [code for code in statuses if code >= 500], statuses
    # The interesting answers were reached, not only 4xx: tasks created and read back, the real
    # file served whole and in ranges, a forged link refused (when /v1/files serves the videos;
    # scaled out, S3 serves them by its own links), and unauthenticated probes refused.
    local_files = video_url.startswith(fuzz_server.base_url)
    for code in (200, 206, 401, 403, 404, 405) if local_files else (200, 401, 404, 405):
        assert statuses[code] > 0, (code, statuses)
    if local_files:
        rates = report["valid_rates"]
        assert rates["GET /v1/files/{filename}"]["fuzzing"]["accepted"] > 0
        assert rates["HEAD /v1/files/{filename}"]["fuzzing"]["accepted"] > 0
    assert "Traceback" not in fuzz_server.log()


def test_without_credentials_every_v1_answer_is_a_documented_401(fuzz_server: Server, tmp_path: Path) -> None:
    result, report, statuses = run_schemathesis(
        fuzz_server, tmp_path,
        "--include-path-regex", AUTHENTICATED, "--phases", "coverage,fuzzing", "--max-examples", "20",
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_headers_conformance,response_schema_conformance",
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    generated = report["test_cases"]["generated"]
    print(f"schemathesis without credentials: {generated} cases, statuses {dict(statuses)}")
    assert generated >= 50
    # 405 is the unsupported-method probe, which is routed before authentication.
    assert set(statuses) <= {401, 405} and statuses[401] >= generated // 2, statuses


RANGE_ERRORS = [("garbage", 400), ("bytes=5-1", 400), ("items=0-1", 400), ("bytes=99999999999-", 416)]


@pytest.mark.xfail(
    KNOWN_RANGE_ENVELOPE_BUG,
    strict=True,
    reason="BUG: FileResponse answers a malformed/unsatisfiable Range with text/plain, not the §4 envelope",
)
@pytest.mark.parametrize(("range_header", "status"), RANGE_ERRORS)
@pytest.mark.embedded_only  # the Range answers of /v1/files; a presigned link's are S3's own
def test_range_errors_use_the_error_envelope(video_url: str, range_header: str, status: int) -> None:
    response = httpx.get(video_url, headers={"Range": range_header}, timeout=10)
    if status == 400 and response.status_code in (200, 206):
        return  # ignoring a malformed Range is also allowed (RFC 9110 §14.2)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert set(error) == {"code", "message", "param"} and error["message"]
    if status == 416:
        assert re.fullmatch(r"bytes \*/[0-9]+", response.headers["content-range"])


# ---- schemathesis hooks: loaded only by the CLI subprocess (SCHEMATHESIS_HOOKS=tests.test_fuzz) ----

if os.environ.get("SCHEMATHESIS_HOOKS") == HOOKS_MODULE:
    import schemathesis

    @schemathesis.hook
    def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
        """Keep every failure but the reported Range bug (KNOWN_RANGE_ENVELOPE_BUG)."""
        headers = {name.lower() for name in (case.headers or {})}
        known = (
            KNOWN_RANGE_ENVELOPE_BUG
            and case.operation.path == "/v1/files/{filename}"
            and "range" in headers
            and response.status_code in (400, 416)
            and response.headers.get("content-type", [""])[0].startswith("text/plain")
        )
        return not known
