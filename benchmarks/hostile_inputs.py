"""What hostile but valid inputs cost, as ratios to a plain input measured in the same run (issue 9 §1).

    python -m benchmarks.hostile_inputs [--rounds 3] [--render-cap 20] [--json PATH]

(a) prompts: `SyntheticEngine.render` of a 5 s 720p text-to-video, in a child process (so a runaway
    layout can be stopped at `--render-cap` seconds), for each prompt shape and for a plain prompt.
    Bound: each shape's median within 1.5x the plain prompt's.
(b) images: create latency on a real `reelq serve --workers 0` (creates are validated, images decoded,
    nothing rendered) of each image shape within the limits, against a plain create: the same body with
    an ordinary image of the same size, a 40 MP 8-bit RGB PNG. (A create without an image is shown too,
    for scale: a data-URI image must be decoded at create, SPEC §1, and decoding scales with the pixels.)
    Bound: each shape's median within 2x the plain create's.
(c) memory: VmRSS of the API process before any image create and after a burst of 40 hostile creates
    (8 at a time; the peak is sampled too). Bound: after within 200 MB of the start.
(d) /healthz: a child process polls it back to back through (b) and (c). Bound: every answer within 50 ms.
(e) floods (issue 19; `--floods` runs only these): VmRSS of `reelq serve --workers 0` before, at the
    peak and after (1) 49 unauthenticated 48 MB posts to `/callbacks/vidu/{id}` and (2) 30 concurrent
    45 MB creates from one key (at its default create limit); and of the relay worker while a hostile
    upstream (tests/hostile_upstream.py) answers a status read with 800 MB. Bound: growth (after minus
    before) within 200 MB each; the relay worker's peak within 200 MB of its start.

The table marks each bound PASS or FAIL; the exit status does not depend on them.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    REELQ,
    RESULTS_DIR,
    ROOT,
    create_key,
    install_signal_cleanup,
    kill_group,
    machine,
    reelq_env,
    reelq_server,
    temp_home,
    write_json,
)

RENDER_BOUND = 1.5
CREATE_BOUND = 2.0
RSS_BOUND_MB = 200
HEALTHZ_BOUND_MS = 50
BURST = 40
BURST_CONCURRENCY = 8
MODEL = "viduq3-turbo"
UNLIMITED = {"REELQ_CREATE_RATE": "1000000000", "REELQ_MAX_ACTIVE_PER_KEY": "1000000000"}
UNLIMITED |= {"REELQ_MAX_QUEUE": "1000000000"}

PLAIN_PROMPT = "A red fox runs through fresh snow at dawn, low sun, long shadows"
PROMPTS: dict[str, str] = {
    "plain": PLAIN_PROMPT,
    "one long word (ASCII)": "p" * 5000,
    'one long word ("é" x 5000)': "é" * 5000,
    'compatibility chars ("㎉" x 5000)': "㎉" * 5000,
    'compatibility chars ("\\ufdfa" x 5000)': "\ufdfa" * 5000,
    "CJK, no spaces": ("狐狸在黎明的新雪中奔跑\uff0c低垂的太阳\uff0c长长的影子。" * 250)[:5000],
    "emoji (ZWJ families)": ("\U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 \U0001f98a " * 600)[
        :5000
    ],
    "combining marks": ("e\u0301\u0308\u0323" * 1250)[:5000],
    "RTL (Arabic)": ("ثعلب أحمر يجري عبر الثلج الطازج عند الفجر " * 130)[:5000],
    "many short words": ("a " * 2500).strip(),
}


# --- (a) prompt shapes: renders in a child process ---------------------------------------------------


def render_child() -> None:
    """Read prompt shape names on stdin, render each (5 s 720p), answer `seconds` per line on stdout."""
    from reelq.domain import VideoSpec
    from reelq.engines.base import RenderInputs
    from reelq.engines.synthetic import SyntheticEngine

    engine = SyntheticEngine()
    with tempfile.TemporaryDirectory(prefix="rq-hostile-") as tmp:
        out = Path(tmp) / "out.mp4"
        warm = VideoSpec(model=MODEL, prompt=PLAIN_PROMPT, duration=1, resolution="540p")
        engine.render(warm, RenderInputs(), out, lambda _f: None)  # fonts, codecs: not measured
        print("ready", flush=True)
        for line in sys.stdin:
            spec = VideoSpec(model=MODEL, prompt=PROMPTS[line.rstrip("\n")], duration=5, resolution="720p")
            started = time.perf_counter()
            engine.render(spec, RenderInputs(), out, lambda _f: None)
            print(f"{time.perf_counter() - started:.4f}", flush=True)


class RenderChild:
    """One `render_child` process; `render` answers seconds, or None when the cap was hit (it is killed)."""

    def __init__(self) -> None:
        args = [sys.executable, "-m", "benchmarks.hostile_inputs", "--render-child"]
        self.proc = subprocess.Popen(
            args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        if self._read_line(120) != "ready":
            raise RuntimeError("the render child did not start")

    def _read_line(self, timeout: float) -> str | None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        return self.proc.stdout.readline().strip()

    def render(self, shape: str, cap: float) -> float | None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(shape + "\n")
        self.proc.stdin.flush()
        line = self._read_line(cap)
        if not line:
            self.close()
            return None
        return float(line)

    def close(self) -> None:
        kill_group(self.proc, timeout=5)


def measure_prompts(rounds: int, cap: float) -> dict[str, Any]:
    seconds: dict[str, list[float]] = {shape: [] for shape in PROMPTS}
    capped: set[str] = set()
    child: RenderChild | None = None
    try:
        for i in range(rounds):
            for shape in PROMPTS:
                if shape in capped:
                    continue  # one render past the cap proves the point; another would only cost time
                child = child or RenderChild()
                took = child.render(shape, cap)
                if took is None:
                    capped.add(shape)
                    child = None
                    print(f"  render {shape}: over the {cap:g} s cap", file=sys.stderr, flush=True)
                    continue
                seconds[shape].append(took)
            print(f"  prompts: round {i + 1}/{rounds} done", file=sys.stderr, flush=True)
    finally:
        if child is not None:
            child.close()
    plain = statistics.median(seconds["plain"])
    shapes = {}
    for shape, runs in seconds.items():
        median = statistics.median(runs) if shape not in capped else None
        ratio = median / plain if median is not None else None
        shapes[shape] = {
            "median_s": round(median, 3) if median is not None else None,
            "over_cap": shape in capped,
            "ratio": round(ratio, 2) if ratio is not None else None,
            "pass": ratio is not None and ratio <= RENDER_BOUND,
            "runs_s": [round(s, 3) for s in runs],
        }
    return {"cap_s": cap, "plain_median_s": round(plain, 3), "bound": RENDER_BOUND, "shapes": shapes}


# --- (b) image shapes --------------------------------------------------------------------------------


def encode(image: Any, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def image_shapes() -> dict[str, tuple[str, bytes]]:
    """name -> (media type, bytes): 40 MP each (as the limit allows), cheap to send, costly to decode."""
    from PIL import Image

    w, h = 8000, 5000
    palette = Image.new("P", (w, h))
    palette.putpalette([0, 0, 0, 255, 0, 0])
    gradient = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    photo = Image.fromarray(np.stack([gradient, gradient[::-1], np.full_like(gradient, 128)], -1))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: shown turned 90 degrees clockwise
    png, jpeg = "image/png", "image/jpeg"
    return {
        "plain: 8000x5000 RGB PNG": (png, encode(Image.new("RGB", (w, h), (40, 90, 160)), "PNG")),
        "7000x5700 1-bit PNG": (png, encode(Image.new("1", (7000, 5700)), "PNG")),
        "8000x5000 palette PNG": (png, encode(palette, "PNG")),
        "8000x5000 RGBA PNG (all zero)": (png, encode(Image.new("RGBA", (w, h)), "PNG")),
        "8000x5000 16-bit grey PNG": (png, encode(Image.fromarray(np.zeros((h, w), np.uint16)), "PNG")),
        "40000x1000 RGB PNG": (png, encode(Image.new("RGB", (40_000, 1000), (40, 90, 160)), "PNG")),
        "1000x40000 RGB PNG": (png, encode(Image.new("RGB", (1000, 40_000), (40, 90, 160)), "PNG")),
        "8000x5000 progressive JPEG": (jpeg, encode(photo, "JPEG", quality=85, progressive=True)),
        "8000x5000 EXIF-rotated JPEG": (jpeg, encode(photo, "JPEG", quality=85, exif=exif)),
        "8000x5000 lossless WebP": (
            "image/webp",
            encode(Image.new("RGB", (w, h), (40, 90, 160)), "WEBP", lossless=True),
        ),
    }


def create_body(media_type: str | None = None, data: bytes | None = None) -> bytes:
    body: dict[str, Any] = {"model": MODEL, "prompt": PLAIN_PROMPT, "duration": 1, "resolution": "540p"}
    if data is not None:
        body["first_image"] = f"data:{media_type};base64,{base64.b64encode(data).decode()}"
    return orjson.dumps(body)


def timed_create(
    client: httpx.Client, body: bytes, windows: list[tuple[float, float]] | None = None
) -> float:
    """One create (it must answer 200): its seconds; `windows` gets its (start, end), monotonic clock."""
    started = time.monotonic()
    answer = client.post("/v1/vidu/videos", content=body, headers={"Content-Type": "application/json"})
    ended = time.monotonic()
    if answer.status_code != 200:
        raise RuntimeError(f"create answered {answer.status_code}: {answer.text[:300]}")
    if windows is not None:
        windows.append((started, ended))
    return ended - started


def measure_creates(
    client: httpx.Client, bodies: dict[str, bytes], rounds: int, windows: dict[str, list[tuple[float, float]]]
) -> dict[str, Any]:
    """Median create latency per shape; `windows` gets when each shape's measured creates ran."""
    seconds: dict[str, list[float]] = {name: [] for name in bodies}
    for body in bodies.values():  # warm-up: the first decode of each kind loads its plugin
        timed_create(client, body)
    for i in range(rounds):
        for name, body in bodies.items():
            seconds[name].append(timed_create(client, body, windows.setdefault(name, [])))
        print(f"  creates: round {i + 1}/{rounds} done", file=sys.stderr, flush=True)
    plain_name = next(name for name in bodies if name.startswith("plain"))
    plain = statistics.median(seconds[plain_name])
    shapes = {}
    for name, runs in seconds.items():
        median = statistics.median(runs)
        shapes[name] = {
            "median_ms": round(1000 * median, 1),
            "ratio": round(median / plain, 2),
            "pass": median / plain <= CREATE_BOUND,
            "body_kb": round(len(bodies[name]) / 1024, 1),
            "runs_ms": [round(1000 * s, 1) for s in runs],
        }
    return {
        "plain": plain_name,
        "plain_median_ms": round(1000 * plain, 1),
        "bound": CREATE_BOUND,
        "shapes": shapes,
    }


# --- (c) memory and (d) /healthz ---------------------------------------------------------------------


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@contextmanager
def rss_sampler(pid: int) -> Iterator[Callable[[], float]]:
    """Sample VmRSS every 50 ms; yields a function answering the peak so far (MB)."""
    peak = [vm_rss_mb(pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], vm_rss_mb(pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: peak[0]
    finally:
        stop.set()
        thread.join()


def healthz_child(base_url: str) -> None:
    """GET /healthz back to back (one keep-alive connection) until stdin closes; print [start, end] of
    each on the system-wide monotonic clock, so the parent can tell which create each one overlapped."""
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    polls: list[tuple[float, float]] = []
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    print("ready", flush=True)
    while not done.is_set():
        started = time.monotonic()
        conn.request("GET", "/healthz")
        answer = conn.getresponse()
        answer.read()
        polls.append((started, time.monotonic()))
        if answer.status != 200:
            raise RuntimeError(f"/healthz answered {answer.status}")
        time.sleep(0.005)
    print(json.dumps(polls), flush=True)


class Polls:
    """The /healthz polls of `healthz_poller`, (start, end) pairs on the monotonic clock."""

    def __init__(self) -> None:
        self.polls: list[tuple[float, float]] = []

    def worst_ms(self, windows: list[tuple[float, float]]) -> float:
        """The slowest poll overlapping any of the windows (ms); 0 when none did."""
        return max(
            (
                1000 * (end - start)
                for start, end in self.polls
                for w0, w1 in windows
                if start < w1 and end > w0
            ),
            default=0.0,
        )

    def summary(self) -> dict[str, Any]:
        latencies = sorted(1000 * (end - start) for start, end in self.polls)
        return {
            "requests": len(latencies),
            "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 2),
            "max_ms": round(latencies[-1], 2),
            "bound_ms": HEALTHZ_BOUND_MS,
            "pass": latencies[-1] <= HEALTHZ_BOUND_MS,
        }


@contextmanager
def healthz_poller(base_url: str) -> Iterator[Polls]:
    """/healthz polled by a child process for as long as the block runs; the polls are filled in after."""
    args = [sys.executable, "-m", "benchmarks.hostile_inputs", "--healthz-child", base_url]
    proc = subprocess.Popen(
        args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    polls = Polls()
    try:
        assert proc.stdin is not None and proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the /healthz poller did not start")
        yield polls
        out, _ = proc.communicate("", timeout=30)
        polls.polls = [(start, end) for start, end in json.loads(out.strip().splitlines()[-1])]
    finally:
        kill_group(proc, timeout=5)


def burst(base_url: str, key: str, bodies: list[bytes]) -> None:
    """The bodies created `BURST_CONCURRENCY` at a time."""

    def send(body: bytes) -> float:
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
            return timed_create(c, body)

    with ThreadPoolExecutor(BURST_CONCURRENCY) as pool:
        list(pool.map(send, bodies))


def measure_images(rounds: int) -> dict[str, Any]:
    started = time.monotonic()
    shapes = image_shapes()
    bodies = {"no image (for scale)": create_body()}
    bodies |= {name: create_body(media, data) for name, (media, data) in shapes.items()}
    print(f"  images made in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    hostile = [body for name, body in bodies.items() if not name.startswith(("plain", "no image"))]
    with temp_home("rq-hostile-") as home:
        env = reelq_env(home, **UNLIMITED)
        key = create_key(env)
        with reelq_server(home, env, workers=0) as (server, base):
            client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120)
            with client:
                timed_create(client, bodies["no image (for scale)"])
                time.sleep(0.5)
                rss_start = vm_rss_mb(server.pid)
                windows: dict[str, list[tuple[float, float]]] = {}
                with healthz_poller(base) as polls, rss_sampler(server.pid) as peak:
                    creates = measure_creates(client, bodies, rounds, windows)
                    rss_before_burst = vm_rss_mb(server.pid)
                    burst_started = time.monotonic()
                    burst(base, key, [hostile[i % len(hostile)] for i in range(BURST)])
                    burst_s = time.monotonic() - burst_started
                    windows["burst"] = [(burst_started, burst_started + burst_s)]
                    time.sleep(1.0)
                    rss_after = vm_rss_mb(server.pid)
                    rss_peak = peak()
    memory = {
        "rss_start_mb": round(rss_start, 1),
        "rss_before_burst_mb": round(rss_before_burst, 1),
        "rss_peak_mb": round(rss_peak, 1),
        "rss_after_mb": round(rss_after, 1),
        "growth_mb": round(rss_after - rss_start, 1),
        "burst": BURST,
        "burst_concurrency": BURST_CONCURRENCY,
        "burst_s": round(burst_s, 2),
        "bound_mb": RSS_BOUND_MB,
        "pass": rss_after - rss_start <= RSS_BOUND_MB,
    }
    for name, shape in creates["shapes"].items():
        shape["healthz_worst_ms"] = round(polls.worst_ms(windows[name]), 1)
    memory["healthz_worst_ms"] = round(polls.worst_ms(windows["burst"]), 1)
    return {"creates": creates, "memory": memory, "healthz": polls.summary()}


# --- (e) floods ----------------------------------------------------------------------------------------

CALLBACK_FLOOD = 49
CALLBACK_BODY_MB = 48
CREATE_FLOOD = 30
CREATE_BODY_MB = 45
HUGE_ANSWER_MB = 800


def _post_all(base: str, path: str, body: bytes, count: int, headers: dict[str, str]) -> dict[str, int]:
    """`count` POSTs of `body` at once (one connection each); how many got each status."""
    statuses: dict[str, int] = {}

    def post(_: int) -> None:
        try:
            answer = httpx.post(base + path, content=body, headers=headers, timeout=300)
            code = str(answer.status_code)
        except httpx.HTTPError as exc:
            code = type(exc).__name__  # the server may close a connection whose body it will not read
        statuses[code] = statuses.get(code, 0) + 1

    with ThreadPoolExecutor(count) as pool:
        list(pool.map(post, range(count)))
    return statuses


def _flood(server_pid: int, send: Callable[[], dict[str, int]]) -> dict[str, Any]:
    time.sleep(0.5)
    before = vm_rss_mb(server_pid)
    started = time.monotonic()
    with rss_sampler(server_pid) as peak:
        statuses = send()
        time.sleep(1.0)
        after = vm_rss_mb(server_pid)
        top = peak()
    return {
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(top, 1),
        "rss_after_mb": round(after, 1),
        "growth_mb": round(after - before, 1),
        "peak_growth_mb": round(top - before, 1),
        "seconds": round(time.monotonic() - started, 1),
        "statuses": statuses,
        "pass": after - before <= RSS_BOUND_MB,
    }


def measure_body_floods() -> dict[str, Any]:
    """(1) unauthenticated callback posts and (2) near-limit creates from one key, on one server."""
    import uuid

    results: dict[str, Any] = {}
    with temp_home("rq-flood-") as home:
        env = reelq_env(home, REELQ_CREATE_RATE="60")  # the default create limit: floods meet it
        key = create_key(env)
        with reelq_server(home, env, workers=0) as (server, base):
            callback = f"/callbacks/vidu/video_{uuid.uuid4()}"
            junk = b"x" * (CALLBACK_BODY_MB * 1024 * 1024)
            results["callbacks"] = _flood(
                server.pid,
                lambda: _post_all(base, callback, junk, CALLBACK_FLOOD, {"Content-Type": "application/json"}),
            )
            print(f"  callbacks: {results['callbacks']}", file=sys.stderr, flush=True)
            # A create whose image is 45 MB of base64 junk: read, parsed and decoded before it is refused.
            raw = b"\0" * (CREATE_BODY_MB * 1024 * 1024 * 3 // 4 - 1024)
            body = create_body("image/png", raw)
            del raw
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
            results["creates"] = _flood(
                server.pid, lambda: _post_all(base, "/v1/vidu/videos", body, CREATE_FLOOD, headers)
            )
            results["creates"]["body_mb"] = round(len(body) / 1024 / 1024, 1)
            print(f"  creates: {results['creates']}", file=sys.stderr, flush=True)
    return results


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found += [int(c) for c in children]
    return found


def _settled_rss(pid: int, within: float = 20.0) -> float:
    """VmRSS once it stops moving (the worker has loaded its modules and made its first claims)."""
    last = vm_rss_mb(pid)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = vm_rss_mb(pid)
        if abs(now - last) < 1.0:
            return now
        last = now
    return last


def measure_relay_answer(answer_mb: int = HUGE_ANSWER_MB) -> dict[str, Any]:
    """The relay worker's RSS while its upstream answers one status read with `answer_mb` MB."""
    from tests.hostile_upstream import HostileUpstream

    upstream = HostileUpstream("huge", huge_bytes=answer_mb * 1024 * 1024).start()
    try:
        with temp_home("rq-relayhuge-") as home:
            models = home / "models.toml"
            models.write_text(
                "[models.viduq3-pro]\nengine = \"relay\"\nupstream = \"reelq\"\n"
                f'base_url = "{upstream.base_url}"\napi_key_env = "HOSTILE_UPSTREAM_KEY"\n'
                "poll_initial = 0.5\npoll_max = 1\nmax_wait = 120\nrequest_timeout = 120\n"
            )
            env = reelq_env(home, REELQ_MODELS=str(models), HOSTILE_UPSTREAM_KEY="k")
            key = create_key(env)
            with reelq_server(home, env, workers=0) as (server, base):
                relay_pid = None
                deadline = time.monotonic() + 30
                while relay_pid is None and time.monotonic() < deadline:
                    for child in _children(server.pid):
                        if b"relay" in Path(f"/proc/{child}/cmdline").read_bytes():
                            relay_pid = child
                    time.sleep(0.2)
                if relay_pid is None:
                    raise RuntimeError("no relay worker process found")
                before = _settled_rss(relay_pid)
                client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
                with client, rss_sampler(relay_pid) as peak:
                    body = {"model": "viduq3-pro", "prompt": PLAIN_PROMPT, "duration": 1}
                    client.post("/v1/vidu/videos", json=body).raise_for_status()
                    # The huge answer is sent (or refused) within the first reads; watch the worker for 20 s.
                    until = time.monotonic() + 20
                    while time.monotonic() < until and upstream.sent < upstream.huge_bytes:
                        time.sleep(0.2)
                    time.sleep(2.0)
                    top = peak()
                    after = vm_rss_mb(relay_pid)
    finally:
        upstream.stop()
    return {
        "answer_mb": answer_mb,
        "upstream_sent_mb": round(upstream.sent / 1024 / 1024, 1),
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(top, 1),
        "rss_after_mb": round(after, 1),
        "peak_growth_mb": round(top - before, 1),
        "pass": top - before <= RSS_BOUND_MB,
    }


def flood_rows(floods: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    names = {
        "callbacks": f"API RSS: {CALLBACK_FLOOD} x {CALLBACK_BODY_MB} MB unauthenticated callback posts",
        "creates": f"API RSS: {CREATE_FLOOD} x {CREATE_BODY_MB} MB creates, one key, at once",
    }
    for name, label in names.items():
        if name in floods:
            f = floods[name]
            value = (
                f"{f['rss_before_mb']:.0f} -> {f['rss_peak_mb']:.0f} -> {f['rss_after_mb']:.0f} MB "
                f"(+{f['growth_mb']:.0f}) {f['statuses']}"
            )
            rows.append(("flood", label, value, f"<= +{RSS_BOUND_MB} MB {verdict(f['pass'])}"))
    if "relay_answer" in floods:
        r = floods["relay_answer"]
        rows.append(
            (
                "flood",
                f"relay worker RSS: a {r['answer_mb']} MB status answer",
                f"{r['rss_before_mb']:.0f} -> peak {r['rss_peak_mb']:.0f} MB (upstream sent "
                f"{r['upstream_sent_mb']:.0f} MB)",
                f"<= +{RSS_BOUND_MB} MB {verdict(r['pass'])}",
            )
        )
    return rows


# --- output ------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def table(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    prompts = result["prompts"]
    for shape, s in prompts["shapes"].items():
        if shape == "plain":
            rows.append(("render", "plain prompt", f"{s['median_s']:.2f} s", ""))
        elif s["over_cap"]:
            rows.append(("render", shape, f"> {prompts['cap_s']:g} s", f"<= {RENDER_BOUND}x FAIL (over cap)"))
        else:
            value = f"{s['median_s']:.2f} s = {s['ratio']:.2f}x"
            rows.append(("render", shape, value, f"<= {RENDER_BOUND}x {verdict(s['pass'])}"))
    creates = result["images"]["creates"]
    for name, s in creates["shapes"].items():
        if name == creates["plain"] or name.startswith("no image"):
            rows.append(
                ("create", name, f"{s['median_ms']:.0f} ms", "reference" if name.startswith("plain") else "")
            )
            continue
        value = f"{s['median_ms']:.0f} ms = {s['ratio']:.2f}x (/healthz worst {s['healthz_worst_ms']:.0f} ms)"
        rows.append(("create", name, value, f"<= {CREATE_BOUND}x {verdict(s['pass'])}"))
    m = result["images"]["memory"]
    rows.append(
        (
            "memory",
            f"API RSS: start -> peak -> after {m['burst']} hostile creates",
            f"{m['rss_start_mb']:.0f} -> {m['rss_peak_mb']:.0f} -> {m['rss_after_mb']:.0f} MB "
            f"(+{m['growth_mb']:.0f})",
            f"<= +{RSS_BOUND_MB} MB {verdict(m['pass'])}",
        )
    )
    h = result["images"]["healthz"]
    rows.append(
        (
            "healthz",
            f"/healthz through (b)+(c), {h['requests']} polls: p50 / p99 / max",
            f"{h['p50_ms']:.1f} / {h['p99_ms']:.1f} / {h['max_ms']:.1f} ms",
            f"<= {HEALTHZ_BOUND_MS} ms {verdict(h['pass'])}",
        )
    )
    return rows


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print()
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds per shape, medians reported (default 3)")
    p.add_argument(
        "--render-cap", type=float, default=20.0, help="seconds after which a render is stopped (default 20)"
    )
    p.add_argument("--skip-prompts", action="store_true", help="only the image, memory and /healthz parts")
    p.add_argument(
        "--floods", action="store_true", help="only (e): the body floods and the huge upstream answer"
    )
    p.add_argument("--huge-answer-mb", type=int, default=HUGE_ANSWER_MB, help="(e): the status answer's size")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "hostile_inputs.json")
    p.add_argument("--render-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--healthz-child", metavar="URL", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    if args.render_child:
        render_child()
        return {}
    if args.healthz_child:
        healthz_child(args.healthz_child)
        return {}
    install_signal_cleanup()
    started = time.monotonic()
    if args.floods:
        print("(e) floods", file=sys.stderr, flush=True)
        floods = measure_body_floods()
        floods["relay_answer"] = measure_relay_answer(args.huge_answer_mb)
        flood_result: dict[str, Any] = {
            "benchmark": "hostile_inputs --floods",
            "machine": machine(),
            "seconds": round(time.monotonic() - started, 1),
            "floods": floods,
            "table": flood_rows(floods),
        }
        print_table(flood_result["table"])
        write_json(args.json.with_name("hostile_floods.json"), flood_result)
        return flood_result
    print("(a) prompt shapes: 5 s 720p synthetic renders", file=sys.stderr, flush=True)
    prompts = (
        measure_prompts(args.rounds, args.render_cap)
        if not args.skip_prompts
        else {"cap_s": args.render_cap, "shapes": {}}
    )
    print("(b-d) image shapes, memory, /healthz on reelq serve --workers 0", file=sys.stderr, flush=True)
    images = measure_images(args.rounds)
    result: dict[str, Any] = {
        "benchmark": "hostile_inputs",
        "machine": machine(),
        "config": {"rounds": args.rounds, "render_cap_s": args.render_cap, "reelq": REELQ},
        "seconds": round(time.monotonic() - started, 1),
        "prompts": prompts,
        "images": images,
    }
    rows = table(result)
    result["table"] = rows
    result["all_pass"] = not any("FAIL" in row[3] for row in rows)
    print_table(rows)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
