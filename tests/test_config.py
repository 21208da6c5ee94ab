"""Config: defaults, YAML/JSON loading, overrides, and errors that say what is wrong."""

import json
import subprocess
import sys
import warnings

import pytest
import yaml

from lmforge.config import Config, ConfigNotice, dump_config, load_config
from lmforge.errors import LmforgeError


def test_every_field_has_a_default_and_round_trips_through_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(Config()))
    assert load_config(path) == Config()


@pytest.mark.parametrize("task", ["classification", "generation"])
def test_a_runs_config_yaml_holds_only_its_tasks_knobs_and_loads_again(tmp_path, task):
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(load_config({"task": task})))
    written = yaml.safe_load(path.read_text())
    other, own = ("generate", "classification") if task == "classification" else (
        "classification", "generate")
    assert own in written and other not in written
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config(path) == load_config({"task": task})


def test_old_layout_loads_with_a_notice_naming_the_new_place():
    old = {"train": {"class_weights": "balanced", "pretrain_steps": 5, "epochs": 2}}
    with pytest.warns(ConfigNotice) as notices:
        cfg = load_config(old)
    assert cfg.classification.class_weights == "balanced"
    assert cfg.classification.pretrain_steps == 5 and cfg.train.epochs == 2
    assert [str(n.message) for n in notices] == [
        "train.class_weights is now classification.class_weights; update your config",
        "train.pretrain_steps is now classification.pretrain_steps; update your config",
    ]
    assert old["train"]["class_weights"] == "balanced"  # the caller's mapping is left alone


def test_a_run_written_before_the_move_still_loads(tmp_path):
    """Old runs' config.yaml held every default, other tasks' knobs included."""
    old_keys = {"class_weights": None, "token_dropout": 0.0, "pretrain_steps": 0,
                "pretrain_lr": None}
    for task in ("classification", "generation"):
        everything = Config(task=task).model_dump(mode="json")
        del everything["classification"]
        everything["train"].update(old_keys)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert load_config(everything) == load_config({"task": task})


def test_a_moved_key_given_in_both_places_is_an_error():
    with pytest.raises(LmforgeError, match="train.token_dropout and "
                                           "classification.token_dropout are both given"):
        load_config({"train": {"token_dropout": 0.1},
                     "classification": {"token_dropout": 0.2}})


@pytest.mark.parametrize(("task", "raw", "knob", "owner"), [
    ("classification", {"generate": {"temperature": 0.5}}, "generate.temperature", "generation"),
    ("classification", {"eval": {"val_tokens": 10}}, "eval.val_tokens", "generation"),
    ("generation", {"classification": {"class_weights": "balanced"}},
     "classification.class_weights", "classification"),
    ("generation", {"train": {"token_dropout": 0.1}}, "classification.token_dropout",
     "classification"),
    ("generation", {"eval": {"bootstrap": 10}}, "eval.bootstrap",
     "classification and translation and regression and recommendation"),
    ("generation", {"data": {"label_column": "y"}}, "data.label_column",
     "classification and regression"),
    ("generation", {"model": {"pooling": "cls"}}, "model.pooling",
     "classification and regression"),
])
def test_a_knob_the_task_does_not_read_is_an_error_naming_it(task, raw, knob, owner):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigNotice)
        with pytest.raises(LmforgeError) as error:
            load_config({"task": task, **raw})
    assert f"{knob} is not used by task '{task}' (it applies to {owner})" in str(error.value)


@pytest.mark.parametrize(("task", "metric", "choices"), [
    ("classification", "val_accuracy", "f1_macro, accuracy, val_loss; did you mean 'accuracy'?"),
    ("generation", "f1_macro", "val_loss, val_perplexity"),
])
def test_an_unknown_early_stopping_metric_fails_at_load_naming_the_choices(task, metric, choices):
    with pytest.raises(LmforgeError, match=f"'{metric}' is not a val metric of task '{task}'; "
                                           f"choose one of: {choices}"):
        load_config({"task": task, "train": {"early_stopping_metric": metric}})
    assert load_config({"task": task, "train": {"early_stopping_metric": "val_loss"}})


def test_device_is_checked_at_load():
    with pytest.raises(LmforgeError, match=r"train\.device.*cuda:N.*'gpu'"):
        load_config({"train": {"device": "gpu"}})
    assert load_config({"train": {"device": "cuda:1"}}).train.device == "cuda:1"


def test_the_command_line_prints_one_notice_line_per_moved_key(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("train: {class_weights: balanced, early_stopping_metric: f1}\n")
    result = subprocess.run([sys.executable, "-m", "lmforge", "train", str(path)],
                            capture_output=True, text=True, timeout=300)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert lines == [
        "notice: train.class_weights is now classification.class_weights; update your config",
        "error: invalid config: train.early_stopping_metric 'f1' is not a val metric of task "
        "'classification'; choose one of: f1_macro, accuracy, val_loss",
    ]


def test_json_config_and_set_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {"epochs": 2}, "data": {"path": "x.csv"}}))
    cfg = load_config(path, ["train.lr=0.001", "data.split.stratify=false", "train.max_steps=null"])
    assert cfg.train.epochs == 2 and cfg.train.lr == 0.001
    assert cfg.data.split.stratify is False and cfg.train.max_steps is None
    assert cfg.data.path == "x.csv"


def test_unknown_key_suggests_the_closest_valid_one():
    with pytest.raises(LmforgeError, match=r"unknown config key 'train.learning_rat'|'train.lr'"):
        load_config({"train": {"learning_rat": 1}})
    with pytest.raises(LmforgeError, match="did you mean 'model.n_layers'"):
        load_config({"model": {"n_layer": 1}})


def test_value_out_of_range_names_the_key():
    with pytest.raises(LmforgeError, match=r"data\.split\.test.*1\.5"):
        load_config({"data": {"split": {"test": 1.5}}})


def test_heads_must_divide_model_width():
    with pytest.raises(LmforgeError, match="n_heads"):
        load_config({"model": {"d_model": 30, "n_heads": 4}})


@pytest.mark.parametrize("text", ["a: [1, 2", "- just\n- a list\n"])
def test_broken_or_non_mapping_yaml_is_a_clear_error(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(LmforgeError, match="bad.yaml"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(LmforgeError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_malformed_set_override():
    with pytest.raises(LmforgeError, match="key=value"):
        load_config({}, ["train.lr"])


def test_readme_config_reference_lists_every_field():
    from pathlib import Path

    from lmforge.config import _valid_keys

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    sections = {"data", "data.clean", "data.split", "tokenizer", "model", "train", "eval"}
    missing = [k for k in _valid_keys(Config) if k not in sections and f"`{k}`" not in readme]
    assert not missing, f"README's config reference lacks {missing}"


def test_a_pretrained_fine_tune_decays_its_learning_rate_linearly_unless_told_otherwise():
    pretrained = {"arch": "pretrained", "pretrained": "some/encoder"}
    assert load_config({"model": pretrained}).train.lr_schedule == "linear"  # as HF Trainer
    assert load_config({}).train.lr_schedule == "cosine"  # lmforge's own encoder
    assert load_config({"task": "generation"}).train.lr_schedule == "cosine"
    told = load_config({"model": pretrained}, ["train.lr_schedule=cosine"])
    assert told.train.lr_schedule == "cosine"
    assert load_config(yaml.safe_load(dump_config(told))).train.lr_schedule == "cosine"
