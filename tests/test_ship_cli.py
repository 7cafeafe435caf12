"""The CLI with no dead ends (issue 23 §3): `generate` asks for the server's first model, not a
hard-coded name; `--base-url`/`--api-key` flags; `models`, `get`, `download`; `list` with a header and
the prompt; `--version`. Against a real `reelq serve` whose models file names other models."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from reelq import __version__
from tests.conftest import Server, reelq_env, run_cli
from tests.videos import decode_frames

pytestmark = [pytest.mark.process, pytest.mark.scaled]

MODELS = (
    '[models.studio-fast]\nengine = "synthetic"\nmax_duration = 4\n\n'
    '[models.studio-pro]\nengine = "synthetic"\n'
)


def _models_file(tmp_path: Path) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(MODELS)
    return path


def test_version(tmp_path: Path) -> None:
    assert run_cli(tmp_path, "--version").stdout.strip() == f"reelq {__version__}"


def test_generate_get_download_and_list_on_a_server_with_other_models(
    make_server, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    server: Server = make_server(workers=1, REELQ_MODELS=str(_models_file(tmp_path)))
    # No REELQ_BASE_URL/REELQ_API_KEY in the environment: the flags alone say where and who.
    env = {k: v for k, v in server.env.items() if k not in ("REELQ_BASE_URL", "REELQ_API_KEY")}
    flags = ["--base-url", server.base_url, "--api-key", server.keys[0]]

    models = run_cli(server.home, "models", *flags, env=env).stdout.splitlines()
    assert models[0].startswith("MODEL\t")
    assert [line.split("\t")[:2] for line in models[1:]] == [["studio-fast", "4"], ["studio-pro", "16"]]

    out = tmp_path / "made.mp4"
    made = run_cli(
        server.home, "generate", "a kite\tover the dunes", "-o", str(out), "--duration", "1",
        "--resolution", "540p", *flags, env=env,
    )
    assert "wrote" in made.stderr and len(decode_frames(out)) == 24

    listed = run_cli(server.home, "list", *flags, env=env).stdout.splitlines()
    assert listed[0].split("\t") == [
        "ID", "STATUS", "MODEL", "CREATED (UTC)", "DURATION", "RESOLUTION", "TOKENS", "PROMPT"
    ]
    task_id, status, model, _created, duration, resolution, tokens, prompt = listed[1].split("\t")
    # The first model the server serves, not a hard-coded viduq3-turbo (which this server refuses).
    assert (status, model, duration, resolution, prompt) == (
        "completed", "studio-fast", "1", "540p", "a kite over the dunes"
    )
    assert tokens == "112"  # 150/s x 1 s x 0.75

    shown = run_cli(server.home, "get", task_id, *flags, env=env).stdout
    assert f"id:        {task_id}" in shown and "status:    completed" in shown and "tokens:    112" in shown
    fetched = run_cli(server.home, "download", task_id, "-o", str(tmp_path / "again.mp4"), *flags, env=env)
    assert (tmp_path / "again.mp4").read_bytes() == out.read_bytes(), fetched.stderr

    # The list's items say what was asked and link a poster (the video's first frame).
    page = httpx.get(
        f"{server.base_url}/v1/vidu/videos",
        headers={"Authorization": f"Bearer {server.keys[0]}"},
        timeout=60,
    ).json()
    item = page["data"][0]
    assert (item["prompt"], item["duration"], item["resolution"], item["aspect_ratio"], item["seed"]) == (
        "a kite\tover the dunes", 1, "540p", "16:9", None
    )
    cover = httpx.get(httpx.URL(server.base_url + "/").join(item["cover_url"]), timeout=60)
    assert cover.status_code == 200
    assert Image.open(io.BytesIO(cover.content)).size == (960, 540)

    # Dead ends that now say what to do.
    half = run_cli(server.home, "generate", "x", "--base-url", server.base_url, env=env, check=False)
    assert half.returncode == 2 and "--api-key" in half.stderr
    unknown = run_cli(server.home, "generate", "x", "--model", "viduq3-turbo", *flags, env=env, check=False)
    assert unknown.returncode == 1 and "model" in unknown.stderr
    queued = httpx.post(
        f"{server.base_url}/v1/vidu/videos",
        headers={"Authorization": f"Bearer {server.keys[0]}"},
        json={"model": "studio-pro", "prompt": "cancelled before its render", "duration": 1},
        timeout=60,
    ).json()
    httpx.post(
        f"{server.base_url}/v1/vidu/videos/{queued['id']}/cancel",
        headers={"Authorization": f"Bearer {server.keys[0]}"},
        timeout=60,
    )
    refused = run_cli(server.home, "download", queued["id"], *flags, env=env, check=False)
    assert refused.returncode == 1 and "failed: Cancelled by user." in refused.stderr


def test_embedded_generate_uses_the_models_files_first_model(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = reelq_env(home, REELQ_MODELS=str(_models_file(tmp_path)))
    out = tmp_path / "local.mp4"
    args = ["generate", "a lantern", "-o", str(out), "--duration", "1", "--resolution", "540p"]
    done = run_cli(home, *args, env=env)
    assert "112 tokens" in done.stderr  # studio-fast's 150/s: viduq3-turbo is not served here
    assert len(decode_frames(out)) == 24
