"""The `reelq` command as an operator uses it: keys, configuration errors, embedded generate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import Server, reelq_env, run_cli
from tests.videos import decode_frames


# The keys live in the store (PostgreSQL scaled out): created, listed and revoked there.
@pytest.mark.scaled
def test_keys_create_prints_id_then_the_key_alone_on_the_last_line(tmp_path: Path) -> None:
    out = run_cli(tmp_path, "keys", "create", "--name", "gateway").stdout
    lines = out.strip().splitlines()
    assert lines[0].startswith("id: key_")
    key = lines[-1]
    assert key.startswith("rq_") and " " not in key and len(key) > 30
    key_id = lines[0].removeprefix("id: ")

    listed = run_cli(tmp_path, "keys", "list").stdout
    assert key_id in listed and "gateway" in listed and "active" in listed
    assert key not in listed  # never the key itself
    stored = Server(home=tmp_path, port=0, env=reelq_env(tmp_path)).query("SELECT * FROM api_keys")
    assert key not in repr(stored)  # stored hashed

    assert run_cli(tmp_path, "keys", "revoke", key_id).returncode == 0
    assert "revoked" in run_cli(tmp_path, "keys", "list").stdout
    missing = run_cli(tmp_path, "keys", "revoke", "key_nope", check=False)
    assert missing.returncode == 1 and "no such key" in missing.stderr


def test_bad_configuration_is_one_clear_line(tmp_path: Path) -> None:
    for name, value in (
        ("REELQ_VIDEO_URL_TTL", "soon"),
        ("REELQ_ROOT_PATH", "nope"),
        ("REELQ_MAX_ATTEMPTS", "0"),
        ("REELQ_MODEL_RATES", "{oops"),
    ):
        result = run_cli(
            tmp_path, "serve", "--port", "9", env=reelq_env(tmp_path, **{name: value}), check=False
        )
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert name in lines[0] and "Traceback" not in result.stderr


# The embedded command creates, claims and stores its task through the store and the video storage.
@pytest.mark.scaled
def test_generate_embedded_writes_a_real_mp4(tmp_path: Path) -> None:
    out = tmp_path / "clips" / "out.mp4"
    result = run_cli(
        tmp_path / "home",
        "generate",
        "a kite over the sea",
        "-o",
        str(out),
        "--duration",
        "2",
        "--resolution",
        "540p",
        "--aspect-ratio",
        "9:16",
        "--seed",
        "4",
    )
    assert "wrote" in result.stderr
    frames = decode_frames(out)
    assert len(frames) == 48
    assert frames[0].shape == (960, 540, 3)


def test_generate_embedded_with_a_local_first_image(tmp_path: Path) -> None:
    image = tmp_path / "start.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None], (240, 1, 3))).save(image)
    out = tmp_path / "i2v.mp4"
    run_cli(
        tmp_path / "home",
        "generate",
        "pan",
        "-o",
        str(out),
        "--duration",
        "1",
        "--resolution",
        "540p",
        "--aspect-ratio",
        "4:3",
        "--first-image",
        str(image),
    )
    first = decode_frames(out)[0].astype(float)
    expected = np.asarray(Image.open(image).convert("RGB").resize((720, 540))).astype(float)
    assert np.abs(first - expected).mean() < 6


def test_generate_rejects_bad_input_clearly(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "generate", "x", "--duration", "99", check=False)
    assert result.returncode == 2 and "duration" in result.stderr and "Traceback" not in result.stderr
