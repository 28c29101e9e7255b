"""Pipeline configs: the shipped examples load and their models work; bad configs name the key."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from mlink.deploy.config import (
    ConfigError,
    PipelineConfig,
    load_config,
    load_object,
    parse_config,
)
from mlink.deploy.source import iter_source
from mlink.eval.workloads import digits, video
from mlink.operators import LinkSettings, SettingsError
from mlink.topics.frames import decode_frame, encode_frame

CONFIGS = Path(__file__).resolve().parent.parent / "deploy" / "configs"
EXAMPLES = sorted(CONFIGS.glob("*.yaml"))


@pytest.fixture(autouse=True)
def _no_broker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLINK_BROKER", raising=False)


def test_the_examples_are_there() -> None:
    assert {"digits.yaml", "video.yaml"} <= {p.name for p in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_config_loads_and_its_specs_validate(path: Path) -> None:
    config = load_config(path)
    assert config.name == path.stem
    specs = config.specs()
    assert list(specs) == config.model_names
    for model in config.models:
        assert specs[model.name].to_dict() == model.output  # written in canonical form
        assert callable(load_object(model.factory))
    if config.source.factory:
        assert callable(load_object(config.source.factory))


def test_digits_config_matches_the_workload() -> None:
    config = load_config(CONFIGS / "digits.yaml")
    assert config.model_names == list(digits.MODELS)
    for model in config.models:
        assert model.factory == "mlink.eval.workloads.digits:model"
        assert model.args == {"name": model.name}
        assert model.output == digits.MODELS[model.name].spec.to_dict()
        assert model.batch
    assert config.source.factory == "mlink.eval.workloads.digits:frames"
    assert config.source.encoding == "png"
    assert config.budget.fraction == 0.33
    assert (config.links.warmup_frames, config.links.probe_every) == (90, 25)
    assert config.links.store == "linkstore-data/digits"
    assert config.topics.names().frames == "mlink.digits.frames"


def test_video_config_matches_the_workload() -> None:
    config = load_config(CONFIGS / "video.yaml")
    assert config.model_names == list(video.DEFAULT_MODELS)
    for model in config.models:
        assert model.factory == "mlink.eval.workloads.video:model"
        assert model.args == {"name": model.name}
        assert model.output == video.spec(model.name).to_dict()
    assert config.source.factory == "mlink.eval.workloads.video:frames"
    assert config.source.encoding == "jpeg"  # 720p frames are too large as PNG


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_models_build_and_answer_a_real_frame(path: Path) -> None:
    """Each black box runs on frames as a worker gets them: off the source, through the codec."""
    config = load_config(path)
    source = config.source.model_copy(update={"limit": 2})
    images = [
        decode_frame(
            encode_frame(
                image,
                stream_id,
                seq,
                encoding=config.source.encoding,
                jpeg_quality=config.source.jpeg_quality,
            )
        )
        for seq, (stream_id, image) in enumerate(iter_source(source))
    ]
    assert len(images) == 2
    for model_config in config.models:
        model = model_config.build()
        spec = model_config.spec
        spec.validate(model(images[0]), model_config.name)
        if model_config.batch:
            outputs = np.asarray(model(np.stack(images)))
            assert outputs.shape[0] == len(images)
            for row in outputs:
                spec.validate(row, model_config.name)


# -- validation errors name the key -----------------------------------------------------------


def _valid() -> dict[str, Any]:
    return {
        "name": "t",
        "source": {"factory": "mlink.eval.workloads.digits:frames"},
        "models": [
            {
                "name": "parity",
                "factory": "mlink.eval.workloads.digits:model",
                "args": {"name": "parity_logreg"},
                "output": {"kind": "vector", "size": 2, "task": "softmax"},
            },
            {
                "name": "loops",
                "factory": "mlink.eval.workloads.digits:model",
                "args": {"name": "loops_knn"},
                "output": {"kind": "vector", "size": 3, "task": "softmax"},
            },
        ],
        "budget": {"fraction": 0.5},
    }


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "test.yaml")
    return str(info.value)


def _names_key(message: str, key: str, what: str) -> bool:
    return re.search(rf"^\s+{re.escape(key)}: .*{what}", message, flags=re.M) is not None


def test_valid_config_parses() -> None:
    config = parse_config(_valid())
    assert isinstance(config, PipelineConfig) and config.broker is None


def test_bad_output_spec_names_the_model_key() -> None:
    data = _valid()
    data["models"][0]["output"] = {"kind": "vector", "size": 0, "task": "softmax"}
    message = _error(data)
    assert "test.yaml" in message
    name0, name1 = data["models"][0]["name"], data["models"][1]["name"]
    assert _names_key(message, f"models.0 (name: {name0}).output", "size must be a positive int")
    data["models"][1]["output"] = {"kind": "blobs"}
    assert _names_key(_error(data), f"models.1 (name: {name1}).output", "kind 'blobs' is unknown")
    del data["models"][1]["name"]  # an entry without a name keeps its index alone
    assert _names_key(_error(data), "models.1.output", "kind 'blobs' is unknown")


@pytest.mark.parametrize(
    "source",
    [{}, {"factory": "a:b", "images": "*.png"}, {"videos": [], "topic": ""}],
    ids=["none", "two", "empty-values"],
)
def test_source_needs_exactly_one_kind(source: dict[str, Any]) -> None:
    data = _valid()
    data["source"] = source
    assert _names_key(_error(data), "source", "exactly one of videos, images, factory, topic")


@pytest.mark.parametrize(
    ("budget", "what"),
    [({}, "at least one of"), ({"ms": 5, "fraction": 0.5}, "either ms or fraction")],
)
def test_budget_needs_one_bound(budget: dict[str, Any], what: str) -> None:
    data = _valid()
    data["budget"] = budget
    assert _names_key(_error(data), "budget", what)


def test_unknown_and_out_of_range_keys_are_named() -> None:
    data = _valid()
    data["links"] = {"warmup": 10}
    data["source"]["jpeg_quality"] = 0
    message = _error(data)
    assert _names_key(message, "links.warmup", "Extra inputs")
    assert _names_key(message, "source.jpeg_quality", "greater than or equal to 1")


def test_probe_settings_past_what_a_schedule_may_carry_are_named() -> None:
    data = _valid()
    data["links"] = {"probe_every": 10_001, "probe_stride": 10_001}
    message = _error(data)
    assert _names_key(message, "links.probe_every", "less than or equal to 10000")
    assert _names_key(message, "links.probe_stride", "less than or equal to 10000")
    with pytest.raises(SettingsError, match="must be <= 10000"):
        LinkSettings(probe_every=20_000)


def test_a_warm_up_too_short_to_cross_fit_is_refused_with_why() -> None:
    """4 frames were accepted, and the first training then failed on every worker."""
    data = _valid()
    data["links"] = {"warmup_frames": 7}
    assert _names_key(_error(data), "links.warmup_frames", "greater than or equal to 8")
    with pytest.raises(SettingsError, match="must be >= 8: the first links are cross-fitted"):
        LinkSettings(warmup_frames=7)
    data["links"] = {"warmup_frames": 8}
    assert parse_config(data).operator_settings().links.warmup_frames == 8


def test_how_often_probes_are_reported_is_a_links_setting() -> None:
    assert parse_config(_valid()).operator_settings().live_report_every == 5
    data = _valid()
    data["links"] = {"report_every": 2}
    assert parse_config(data).operator_settings().live_report_every == 2
    data["links"] = {"report_every": 0}
    assert _names_key(_error(data), "links.report_every", "greater than or equal to 1")


@pytest.mark.parametrize(
    "budget",
    [
        {"targets": {"parity": 0.9}},
        {"target_agreement": 0.95, "targets": {"parity": 0.99}},
        {"ms": 10, "targets": {"loops": 1.0}},
    ],
)
def test_per_model_targets_reach_the_operators(budget: dict[str, Any]) -> None:
    """A worker builds its settings from the config at start-up: a per-model target that the
    settings refused would stop every worker of the pipeline."""
    data = _valid()
    data["budget"] = budget
    config = parse_config(data)
    assert config.operator_settings().budget == config.budget_dict()
    with pytest.raises(SettingsError, match="unknown keys"):
        replace(config.operator_settings(), budget={**config.budget_dict(), "speed": 1.0})
    for bad in ({"target_agreement:parity": 7.0}, {"target_agreement:": 0.5}, {"ms": -1.0}):
        with pytest.raises(SettingsError):  # an embedded app's settings are checked as a config
            replace(config.operator_settings(), budget=bad)


def test_targets_over_more_models_than_the_exact_search_takes_are_refused() -> None:
    """Both target searches try every active set: past 16 models a controller could never plan
    and the pipeline would stay in warm-up, so the config says so up front."""
    data = _valid()
    model = data["models"][0]
    data["models"] = [{**model, "name": f"m{i}"} for i in range(17)]
    data["budget"] = {"target_agreement": 0.9}
    assert "at most 16 models; this pipeline has 17" in _error(data)
    data["budget"] = {"fraction": 0.5}
    assert parse_config(data).budget.fraction == 0.5  # compute budgets take any number


def test_factory_args_are_checked_against_the_callable_that_is_called() -> None:
    """A misspelt argument is named before anything runs; a decorator's own argument is not
    refused because the function it wraps lacks it."""
    data = _valid()
    spec = {"kind": "vector", "size": 2, "task": "softmax"}
    data["models"][0] = {"name": "w", "factory": "tests.misbehaving_models:wrapped_factory"}
    data["models"][0] |= {"output": spec, "args": {"device": "cuda", "scale": 2.0}}
    config = parse_config(data)
    assert callable(config.model("w").build())
    data["models"][0]["factory"] = "tests.misbehaving_models:misbehaving"
    data["models"][0]["args"] = {"faul": "raise"}
    with pytest.raises(ConfigError, match="does not take args"):
        parse_config(data).model("w").build()
    data["models"][0]["factory"] = "tests.misbehaving_models:CachedModel"  # __new__(*a, **kw)
    data["models"][0]["args"] = {"scael": 2.0}
    with pytest.raises(ConfigError, match=r"does not take args.*scael"):
        parse_config(data).model("w").build()
    data["models"][0]["args"] = {"scale": 2.0}
    assert callable(parse_config(data).model("w").build())
    for factory, args in (
        ("MetaBuilt", {"backend": "cv", "scale": 2.0}),
        ("Dispatcher", {"backend": "cv"}),
    ):
        data["models"][0]["factory"] = f"tests.misbehaving_models:{factory}"
        data["models"][0]["args"] = args  # builds fine: a refusal here would be a false one
        assert callable(parse_config(data).model("w").build()), factory


def test_model_threads_reach_the_operators_one_by_default() -> None:
    assert parse_config(_valid()).operator_settings().model_threads == 1
    data = _valid()
    data["runtime"] = {"model_threads": None}
    assert parse_config(data).operator_settings().model_threads is None
    data["runtime"] = {"model_threads": 0}
    assert _names_key(_error(data), "runtime.model_threads", "greater than or equal to 1")


def test_weighing_streams_alike_is_a_links_setting_on_by_default() -> None:
    assert parse_config(_valid()).operator_settings().links.balance_streams is True
    data = _valid()
    data["links"] = {"balance_streams": False}
    assert parse_config(data).operator_settings().links.balance_streams is False


def test_the_ensembles_train_as_many_epochs_as_the_links_unless_told() -> None:
    """A config with few epochs for a quick test used to train every ensemble for 100 all the
    same: most of a retrain's time in the e2e tests."""
    assert parse_config(_valid()).operator_settings().links.train.ensemble_epochs == 100
    data = _valid()
    data["links"] = {"epochs": 5}
    assert parse_config(data).operator_settings().links.train.ensemble_epochs == 5
    data["links"] = {"epochs": 5, "ensemble_epochs": 40}
    train = parse_config(data).operator_settings().links.train
    assert (train.epochs, train.ensemble_epochs) == (5, 40)
    data["links"] = {"ensemble_epochs": 0}
    assert _names_key(_error(data), "links.ensemble_epochs", "greater than or equal to 1")


def test_model_names_must_be_unique_and_at_least_two() -> None:
    data = _valid()
    data["models"][1]["name"] = "parity"
    assert _names_key(_error(data), "models", r"repeated: \['parity'\]")
    data["models"] = data["models"][:1]
    assert _names_key(_error(data), "models", "at least 2")


def test_mlink_broker_env_overrides_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    data = {**_valid(), "broker": "config-host:9092"}
    assert parse_config(data).broker == "config-host:9092"
    monkeypatch.setenv("MLINK_BROKER", "env-host:19092")
    assert parse_config(data).broker == "env-host:19092"
    assert parse_config(_valid()).broker == "env-host:19092"


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping, got list"):
        load_config(listing)


def test_load_config_reports_the_file(tmp_path: Path) -> None:
    data = _valid()
    del data["budget"]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and _names_key(message, "budget", "Field required")


# -- load_object ------------------------------------------------------------------------------


def test_load_object_resolves_dotted_attributes() -> None:
    assert load_object("mlink.eval.workloads.digits:model") is digits.model
    assert load_object("mlink.eval.workloads.digits:MODELS.get") == digits.MODELS.get


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("mlink.eval.workloads.digits.model", "must look like 'package.module:callable'"),
        (":model", "must look like"),
        ("mlink.eval.workloads.digits:", "must look like"),
        ("mlink.no_such_module:f", "cannot import module 'mlink.no_such_module'"),
        ("mlink.eval.workloads.digits:no_such", "has no attribute 'no_such'"),
    ],
)
def test_load_object_errors(path: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_object(path)


def test_a_module_not_found_says_where_python_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_object("shop_models.faces:model")
    message = str(info.value)
    assert f"working directory {tmp_path}" in message and "PYTHONPATH" in message
    assert "holds 'shop_models'" in message
    (tmp_path / "shop_models.py").write_text("import no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as info:  # found, but what it imports is not
        load_object("shop_models:model")
    assert "a module that 'shop_models' imports is missing: install it" in str(info.value)
    assert "working directory" not in str(info.value)


def test_model_factory_must_return_a_callable() -> None:
    data = _valid()
    data["models"][0]["factory"] = "mlink.eval.workloads.digits:MODELS"
    with pytest.raises(ConfigError, match="is not callable"):
        parse_config(data).models[0].build()
    data["models"][0]["factory"] = "mlink.eval.workloads.digits:specs"
    data["models"][0]["args"] = {}
    with pytest.raises(ConfigError, match="returned dict, not a callable"):
        parse_config(data).models[0].build()


def test_a_memory_budget_needs_every_models_memory_declared() -> None:
    data = {
        "name": "mem",
        "source": {"factory": "tests.bench_models:frames"},
        "models": [
            {
                "name": "a",
                "factory": "tests.bench_models:model",
                "args": {"name": "bright"},
                "output": {"kind": "vector", "size": 2, "task": "softmax"},
                "cost": {"memory_mb": 100},
            },
            {
                "name": "b",
                "factory": "tests.bench_models:model",
                "args": {"name": "level"},
                "output": {"kind": "vector", "size": 1, "task": "count", "max_count": 4},
            },
        ],
        "budget": {"memory_mb": 500},
    }
    with pytest.raises(ConfigError, match=r"cost.memory_mb on every model; missing on \['b'\]"):
        parse_config(data)
    data["models"][1]["cost"] = {"memory_mb": 50}
    assert parse_config(data).budget.memory_mb == 500


def test_a_stream_pipelines_first_links_train_quickly_unless_told() -> None:
    assert parse_config(_valid()).operator_settings().links.first_epochs == 5
    data = _valid()
    data["links"] = {"first_epochs": 0}
    assert parse_config(data).operator_settings().links.first_epochs == 0
    data["links"] = {"first_epochs": -1}
    assert _names_key(_error(data), "links.first_epochs", "greater than or equal to 0")
