"""Several GPUs for one video, on the CPU: two ranks joined by gloo, the tiny random-weight pipelines.

The models-file keys and the combinations refused; the supervisor's GPU groups; a two-rank worker
(tests/parallel_worker.py, a process of its own as in production) whose renders equal the one-process
renders of the same seed, frame for frame (cfg on Wan and LTX-Video, Ulysses on Wan), that stops
between two steps on every rank at once; and a follower killed mid-render: the worker ends with its
own exit code and the task goes back to the queue through the supervisor's recovery.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("CI") != "true":  # under CI the extra is installed: a missing one must fail
    pytest.importorskip("diffusers")

import av
import torch

from reelq.config import ConfigError, load_settings
from reelq.database import NewTask, TaskStore, make_engine, migrate
from reelq.dispatch import supervisor
from reelq.dispatch.children import worker_marker
from reelq.dispatch.gpus import default_worker_count, gpus_per_worker, worker_gpu_groups
from reelq.domain import VideoSpec
from reelq.engines.base import RenderInputs
from reelq.engines.diffusers.options import limits_of, parse_options
from reelq.engines.diffusers.ranks import RANK_LOST_EXIT_CODE
from tests.test_gpus import visible_devices
from tests.tiny_pipelines import save_ltx, save_wan

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

ROOT = Path(__file__).resolve().parent.parent
# Every rank and the test itself load torch: one thread each keeps two processes off each other's cores.
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PROCESS_TIMEOUT = 240  # generous: a bound on a hang, never a measure


# --- the models-file keys ----------------------------------------------------------------------------


def _opts(**keys: object) -> dict[str, object]:
    return {"pipeline": "WanPipeline", "weights": "/w"} | keys


@pytest.mark.unit
def test_the_split_defaults_to_cfg_on_two_gpus_with_guidance_else_ulysses() -> None:
    assert parse_options(_opts()).parallel_mode is None
    assert parse_options(_opts(gpus_per_worker=2)).parallel_mode == "cfg"
    assert parse_options(_opts(gpus_per_worker=2, guidance=1.0)).parallel_mode == "ulysses"
    assert parse_options(_opts(gpus_per_worker=4)).parallel_mode == "ulysses"
    assert parse_options(_opts(gpus_per_worker=8, parallel="ring")).parallel_mode == "ring"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"gpus_per_worker": 3}, "gpus_per_worker"),
        ({"parallel": "cfg"}, "needs gpus_per_worker = 2, 4 or 8"),
        ({"gpus_per_worker": 2, "parallel": "cfg", "guidance": 1.0}, "no second branch"),
        ({"gpus_per_worker": 4, "parallel": "cfg"}, "exactly 2 GPUs, not 4"),
        ({"gpus_per_worker": 2, "parallel": "ring", "attention_backend": "native"}, "log-sum-exp"),
        ({"gpus_per_worker": 2, "cpu_offload": "model"}, "cpu_offload"),
        ({"gpus_per_worker": 2, "cache": {"threshold": 0.1}}, "step cache"),
        ({"gpus_per_worker": 2, "device": "cuda:1"}, "names one device"),
        ({"gpus_per_worker": 2, "parallel": "tensor"}, "parallel"),
    ],
)
def test_combinations_that_cannot_render_are_refused_with_the_reason(keys: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        limits_of(_opts(**keys), None)


@pytest.mark.unit
def test_ulysses_needs_heads_that_divide_over_the_gpus(tmp_path: Path) -> None:
    (tmp_path / "transformer").mkdir()
    (tmp_path / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    (tmp_path / "transformer" / "config.json").write_text('{"num_attention_heads": 12}')
    opts = {"pipeline": "WanPipeline", "weights": str(tmp_path)}
    limits_of(opts | {"gpus_per_worker": 4, "parallel": "ulysses"}, None)
    with pytest.raises(ValueError, match="12 attention heads over 8 GPUs"):
        limits_of(opts | {"gpus_per_worker": 8, "parallel": "ulysses"}, None)


# --- the supervisor's GPU groups ---------------------------------------------------------------------


def _models_file(tmp_path: Path, *sizes: int) -> Path:
    weights = tmp_path / "weights"
    weights.mkdir(exist_ok=True)
    (weights / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    path = tmp_path / "models.toml"
    path.write_text(
        "".join(
            f'[models.m{i}]\nengine = "diffusers"\npipeline = "WanPipeline"\nweights = "{weights}"\n'
            f"gpus_per_worker = {n}\n"
            for i, n in enumerate(sizes)
        )
    )
    return path


@pytest.mark.unit
def test_workers_get_contiguous_gpu_groups_one_worker_per_group(tmp_path: Path) -> None:
    settings = load_settings(models_file=_models_file(tmp_path, 2, 1), gpus="0,1,2,3")
    assert gpus_per_worker(settings) == 2  # the one-GPU model renders on each worker's first GPU
    groups = worker_gpu_groups(settings)
    assert groups == ["0,1", "2,3"]
    assert default_worker_count(settings, groups) == 2
    four = load_settings(models_file=_models_file(tmp_path, 4), gpus="4,5,6,7,0,1,2,3")
    assert worker_gpu_groups(four) == ["4,5,6,7", "0,1,2,3"]


@pytest.mark.unit
def test_groups_that_cannot_be_formed_stop_the_node_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not divide the 3 GPUs"):
        worker_gpu_groups(load_settings(models_file=_models_file(tmp_path, 2), gpus="0,1,2"))
    with pytest.raises(ConfigError, match="agree on gpus_per_worker"):
        worker_gpu_groups(load_settings(models_file=_models_file(tmp_path, 2, 4), gpus="0,1,2,3"))


@pytest.mark.service
def test_each_worker_sees_only_its_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(home=tmp_path / "home", models_file=_models_file(tmp_path, 2), gpus="0,1,2,3")
    settings.home_dir.mkdir()
    groups = worker_gpu_groups(settings)
    sup = supervisor.Supervisor(settings, default_worker_count(settings, groups), groups)
    assert visible_devices(sup, tmp_path, monkeypatch) == ["0,1", "2,3"]


# --- two ranks on the CPU ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    return {"wan": save_wan(root / "wan"), "ltx": save_ltx(root / "ltx")}


def _write_models(path: Path, weights: dict[str, Path], gpus: int) -> Path:
    """The same model names (the seed depends on the name) on one GPU or split over two ranks."""
    tiny = "steps = 4\nmax_pixels = 4096\n"
    split = {
        1: ("", "", ""),
        2: ("gpus_per_worker = 2\n",) * 2 + ('gpus_per_worker = 2\nparallel = "ulysses"\n',),
    }
    wan_cfg, ltx_cfg, wan_ulysses = split[gpus]
    wan, ltx = weights["wan"], weights["ltx"]
    path.write_text(
        f'[models.wan]\nengine = "diffusers"\npipeline = "WanPipeline"\nweights = "{wan}"\n{tiny}{wan_cfg}'
        f'[models.ltx]\nengine = "diffusers"\npipeline = "LTXPipeline"\nweights = "{ltx}"\n{tiny}{ltx_cfg}'
        f'[models.wan-ulysses]\nengine = "diffusers"\npipeline = "WanPipeline"\nweights = "{wan}"\n'
        f"{tiny}{wan_ulysses}"
    )
    return path


def _helper(*args: str, timeout: float = PROCESS_TIMEOUT) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ) | THREADS | {"PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    return subprocess.run(
        [sys.executable, "-m", "tests.parallel_worker", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.fixture(scope="module")
def one_process(
    weights: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> dict[str, np.ndarray]:
    """The reference: each model rendered in this process on one device."""
    from reelq.engines.diffusers.engine import DiffusersEngine

    root = tmp_path_factory.mktemp("one")
    settings = load_settings(models_file=_write_models(root / "models.toml", weights, 1), home=root / "home")
    engine = DiffusersEngine(settings)
    frames = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank runs (THREADS): the same reductions in the same order
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    for model in ("wan", "ltx", "wan-ulysses"):
        spec = VideoSpec(
            model=model, prompt="a red fox in snow", duration=1, aspect_ratio="1:1", resolution="540p"
        )
        engine.render(spec, RenderInputs(), root / f"{model}.mp4", lambda _: None)
        frames[model] = _frames(root / f"{model}.mp4")
    return frames


@pytest.mark.process
def test_two_ranks_render_the_same_mp4s_as_one_process_and_stop_together(
    weights: dict[str, Path], one_process: dict[str, np.ndarray], tmp_path: Path
) -> None:
    models = _write_models(tmp_path / "models.toml", weights, 2)
    out = tmp_path / "out"
    out.mkdir()
    done = _helper("render", str(models), str(tmp_path / "home"), str(out), "wan", "ltx", "wan-ulysses")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    # Stopped at the second step on both ranks: the renders after it still run in step.
    assert lines[0] == "stopped 2" and not (out / "stopped.mp4").exists()
    assert lines[1].startswith("refused ") and "split evenly over 2 GPUs" in lines[1]
    assert lines[2:] == ["rendered wan", "rendered ltx", "rendered wan-ulysses"]
    diffs = {}
    for model, reference in one_process.items():
        frames = _frames(out / f"{model}.mp4")
        assert frames.shape == reference.shape == (24, 540, 540, 3)
        diff = np.abs(frames.astype(np.int16) - reference.astype(np.int16))
        diffs[model] = (int(diff.max()), float(diff.mean()))
    # cfg on Wan runs the very computations of one process; LTX-Video's halves of its batch of two and
    # Ulysses' attention over half the heads each round differently, here and there, by a few levels.
    assert diffs["wan"] == (0, 0.0), diffs
    assert all(worst <= 8 and mean < 0.01 for worst, mean in diffs.values()), diffs


@pytest.fixture
def store_with_task(weights: dict[str, Path], tmp_path: Path) -> Iterator[tuple[Path, Path, TaskStore, str]]:
    home = tmp_path / "home"
    home.mkdir()
    models = tmp_path / "models.toml"  # one model: every rank loads only what it renders
    models.write_text(
        f'[models.wan]\nengine = "diffusers"\npipeline = "WanPipeline"\nweights = "{weights["wan"]}"\n'
        "steps = 4\nmax_pixels = 4096\ngpus_per_worker = 2\n"
    )
    settings = load_settings(models_file=models, home=home)
    db = make_engine(settings.sqlalchemy_url)
    migrate(db)
    store = TaskStore(db)
    new = NewTask(model="wan", prompt="a lake", duration=1, aspect_ratio="1:1", resolution="540p")
    row, _ = store.create_task(store.ensure_local_key(), new)
    yield models, home, store, row.id
    db.dispose()


@pytest.mark.process
def test_a_follower_killed_mid_render_ends_the_worker_and_the_task_is_retried(
    store_with_task: tuple[Path, Path, TaskStore, str],
) -> None:
    models, home, store, task_id = store_with_task
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.parallel_worker", "kill", str(models), str(home)],
        cwd=ROOT,
        env=dict(os.environ) | THREADS | {"PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=PROCESS_TIMEOUT)
    assert proc.returncode == RANK_LOST_EXIT_CODE, (out, err[-3000:])
    assert "claimed" in out and "killed" in out and "finished" not in out
    row = store.get_task(task_id)
    assert row is not None and row.status == "processing"  # the dead worker's lease holds it
    # What the supervisor does when a worker process exits: its leases expire, the sweep requeues.
    settings = load_settings(models_file=models, home=home, max_attempts=2)
    sup = supervisor.Supervisor(settings, 0)
    sup._recover(proc.pid)
    row = store.get_task(task_id)
    assert row is not None and row.status == "queued" and row.attempts == 1
    # On its last attempt the same recovery fails it: a task once accepted never waits forever.
    claimed = store.claim_next(f"{worker_marker(proc.pid)}w0", 30)
    assert claimed is not None and claimed.id == task_id
    sup_last = supervisor.Supervisor(load_settings(models_file=models, home=home, max_attempts=2), 0)
    sup_last._recover(proc.pid)
    row = store.get_task(task_id)
    assert row is not None and row.status == "failed"
