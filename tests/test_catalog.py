"""The models file (REELQ_MODELS, SPEC §5): which models are served, by what, and what each refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reelq.config import ConfigError, Settings, load_settings
from tests.conftest import run_cli

WAN_T2V = '[models.wan]\nengine = "diffusers"\npipeline = "WanPipeline"\nweights = "{t2v}"\n'


def _models(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def _checkpoint(root: Path, index: dict, transformer: dict | None = None) -> Path:
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps(index))
    if transformer is not None:
        (root / "transformer").mkdir()
        (root / "transformer" / "config.json").write_text(json.dumps(transformer))
    return root


def test_without_a_models_file_the_two_synthetic_models_are_served() -> None:
    settings = load_settings()
    assert settings.models == ["viduq3-pro", "viduq3-turbo"]
    assert settings.token_rates == {"viduq3-pro": 300, "viduq3-turbo": 150}
    assert {settings.engine_for(m) for m in settings.models} == {"synthetic"}


def test_the_file_alone_says_what_is_served(tmp_path: Path) -> None:
    path = _models(
        tmp_path,
        '[models.studio-pro]\nengine = "synthetic"\n\n'
        '[models.quick]\nengine = "synthetic"\ntokens_per_second = 42\nmax_duration = 4\n',
    )
    settings = load_settings(models_file=path)
    assert settings.models == ["studio-pro", "quick"]
    # SPEC §5: 300 for *-pro, 150 otherwise, unless the file says.
    assert settings.token_rates == {"studio-pro": 300, "quick": 42}
    assert settings.model_limits["quick"].max_duration == 4
    # A child worker gets the validated copy, not a second read of a file that may have changed.
    path.write_text("garbage = [")
    child = Settings.from_json(settings.to_json())
    assert child.models == ["studio-pro", "quick"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[models", "not valid TOML"),
        ("x = 1\n", "unknown top-level key 'x'"),
        ("", "no \\[models.<name>\\] table"),
        ('[models.a]\nengine = "warp"\n', "\\[models.a\\]: engine = 'warp' is not one of"),
        ("[models.a]\n", "engine = None is not one of"),
        ('[models.a]\nengine = "synthetic"\nsteps = 3\n', "unknown key 'steps'"),
        ('[models.a]\nengine = "synthetic"\nmax_duration = 99\n', "max_duration"),
        ('[models.a]\nengine = "synthetic"\ntokens_per_second = -1\n', "tokens_per_second"),
        ('[models.a]\nengine = "diffusers"\npipeline = "WanPipeline"\n', "weights"),
        ('[models.a]\nengine = "diffusers"\npipeline = "MagicPipeline"\nweights = "/x"\n', "MagicPipeline"),
        (
            '[models.a]\nengine = "diffusers"\npipeline = "WanPipeline"\nweights = "/nowhere"\n',
            "model_index.json",
        ),
    ],
)
def test_a_wrong_models_file_stops_start_up_with_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(models_file=_models(tmp_path, text))
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("invalid configuration: REELQ_MODELS:")


def test_the_older_variables_cannot_contradict_the_file(tmp_path: Path) -> None:
    path = _models(tmp_path, '[models.a]\nengine = "synthetic"\n')
    with pytest.raises(ConfigError, match="drop REELQ_MODEL_RATES"):
        load_settings(models_file=path, model_rates={"b": 1})


def test_what_a_diffusers_model_can_do_is_read_from_its_checkpoint(tmp_path: Path) -> None:
    wan21_i2v = {"image_dim": 1280, "pos_embed_seq_len": None}
    cases = {
        # (i2v pipeline, model_index, transformer config) -> (first_image, last_image)
        "none": (None, None, None, (False, False)),
        "wan21-i2v": ("WanImageToVideoPipeline", {}, wan21_i2v, (True, False)),
        "wan21-flf2v": (
            "WanImageToVideoPipeline",
            {},
            {"image_dim": 1280, "pos_embed_seq_len": 514},
            (True, True),
        ),
        "wan22-a14b": ("WanImageToVideoPipeline", {"boundary_ratio": 0.9}, {"image_dim": None}, (True, True)),
        "wan22-ti2v": (
            "WanImageToVideoPipeline",
            {"expand_timesteps": True},
            {"image_dim": None},
            (True, False),
        ),
        "ltx-i2v": ("LTXImageToVideoPipeline", {}, None, (True, False)),
        "ltx-cond": ("LTXConditionPipeline", {}, None, (True, True)),
    }
    t2v = _checkpoint(tmp_path / "t2v", {"_class_name": "WanPipeline"})
    text = ""
    for name, (i2v, index, transformer, _) in cases.items():
        family_t2v = "LTXPipeline" if i2v and i2v.startswith("LTX") else "WanPipeline"
        text += f'[models.{name}]\nengine = "diffusers"\npipeline = "{family_t2v}"\nweights = "{t2v}"\n'
        if i2v:
            weights = _checkpoint(tmp_path / name, index, transformer)
            text += f'i2v_pipeline = "{i2v}"\ni2v_weights = "{weights}"\n'
    text += f'[models.forced]\nengine = "diffusers"\npipeline = "WanPipeline"\nweights = "{t2v}"\n'
    text += f'i2v_pipeline = "WanImageToVideoPipeline"\ni2v_weights = "{tmp_path / "wan21-i2v"}"\n'
    text += "last_image = true\nmax_duration = 8\n"
    limits = load_settings(models_file=_models(tmp_path, text)).model_limits
    for name, (*_, expected) in cases.items():
        assert (limits[name].first_image, limits[name].last_image) == expected, name
    assert limits["none"].max_duration == 5  # Wan's trained clip length unless configured
    assert limits["ltx-cond"].max_duration == 10
    assert (limits["forced"].last_image, limits["forced"].max_duration) == (True, 8)


@pytest.mark.e2e
def test_a_request_a_model_cannot_serve_is_refused_at_create_naming_the_field(
    make_app_server, tmp_path: Path
) -> None:
    path = _models(tmp_path, '[models.short]\nengine = "synthetic"\nmax_duration = 3\n')
    server = make_app_server(workers=0, REELQ_MODELS=str(path))
    with server.client() as client:
        answer = client.post("/v1/vidu/videos", json={"model": "short", "prompt": "a cat", "duration": 4})
        assert answer.status_code == 400
        assert answer.json()["error"]["param"] == "duration"
        assert "at most 3 seconds" in answer.json()["error"]["message"]
        answer = client.post("/v1/vidu/videos", json={"model": "viduq3-pro", "prompt": "a cat"})
        assert (answer.status_code, answer.json()["error"]["param"]) == (400, "model")
        assert client.post(
            "/v1/vidu/videos", json={"model": "short", "prompt": "a cat", "duration": 3}
        ).is_success


def test_serve_refuses_a_bad_models_file_with_one_line(tmp_path: Path) -> None:
    from tests.conftest import reelq_env

    path = _models(tmp_path, '[models.a]\nengine = "warp"\n')
    done = run_cli(
        tmp_path, "serve", env=reelq_env(tmp_path, REELQ_MODELS=str(path)), check=False, timeout=60
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "REELQ_MODELS" in lines[0] and "Traceback" not in done.stderr
