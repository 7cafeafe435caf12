"""Render workers on GPUs: which GPUs, how many workers, and each worker's only visible device."""

from __future__ import annotations

from pathlib import Path

import pytest

from reelq.config import load_settings
from reelq.dispatch import supervisor
from reelq.dispatch.gpus import default_worker_count, worker_gpus


def _diffusers_models(tmp_path: Path) -> Path:
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    path = tmp_path / "models.toml"
    path.write_text(f'[models.wan]\nengine = "diffusers"\npipeline = "WanPipeline"\nweights = "{weights}"\n')
    return path


def test_no_gpu_is_looked_for_without_a_gpu_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    settings = load_settings()
    assert worker_gpus(settings) == []
    assert default_worker_count(settings, []) == 2


def test_gpus_come_from_the_setting_then_cuda_visible_devices_then_nvidia_smi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = _diffusers_models(tmp_path)
    assert worker_gpus(load_settings(models_file=models, gpus="2, 3")) == ["2", "3"]
    assert worker_gpus(load_settings(models_file=models, gpus="none")) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert worker_gpus(load_settings(models_file=models)) == ["1", "3"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nprintf '0\\n1\\n2\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    settings = load_settings(models_file=models)
    assert worker_gpus(settings) == ["0", "1", "2"]
    assert default_worker_count(settings, ["0", "1", "2"]) == 3  # one worker per GPU
    assert default_worker_count(load_settings(models_file=models, workers=5), ["0"]) == 5  # as asked


def visible_devices(
    sup: supervisor.Supervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> list[str | None]:
    """Spawn each of the supervisor's children with a stand-in for Popen; the CUDA_VISIBLE_DEVICES
    each was given, in order."""
    seen: list[str | None] = []

    class FakeProcess:
        pid, stdin = 4242, None

        def __init__(self, args: list[str], env: dict[str, str], **_: object) -> None:
            seen.append(env.get("CUDA_VISIBLE_DEVICES"))
            self.stdin = open(tmp_path / f"stdin{len(seen)}", "wb")  # noqa: SIM115 - closed by _spawn

    monkeypatch.setattr(supervisor.subprocess, "Popen", FakeProcess)
    for child in sup.children:
        sup._spawn(child)
    return seen


def test_each_render_worker_sees_only_its_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(home=tmp_path / "home", models_file=_diffusers_models(tmp_path))
    settings.home_dir.mkdir()
    sup = supervisor.Supervisor(settings, 3, ["0", "1"])
    assert visible_devices(sup, tmp_path, monkeypatch) == ["0", "1", "0"]
