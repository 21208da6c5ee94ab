"""The command line as a user meets it: one clear line and a non-zero exit for every mistake."""

import json
import os
import subprocess
import sys

import pytest
from conftest import tiny_config


def lmforge(*args, stdin=None, cwd=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lmforge", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


@pytest.fixture
def config_file(tmp_path, reviews_csv):
    path = tmp_path / "reviews.yaml"
    path.write_text(json.dumps(tiny_config(reviews_csv)))
    return path


def test_train_predict_from_stdin_and_evaluate(tmp_path, config_file):
    run = tmp_path / "run"
    result = lmforge("train", config_file, "--out", run, "--set", "train.max_steps=10")
    assert result.returncode == 0, result.stderr
    assert "tfidf_logreg" in result.stderr and (run / "model" / "lmforge.json").is_file()
    long_text = "很好 " * 100
    result = lmforge("predict", run / "model", "--input", "-", stdin=f"很好\n{long_text}\n")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 2 and rows[0]["label"] in {"pos", "neg"}
    assert "1 truncated" in result.stderr
    result = lmforge("evaluate", run)
    assert result.returncode == 0 and "accuracy" in result.stderr


def test_default_run_directory_is_named_after_the_config(tmp_path, config_file):
    result = lmforge("train", config_file, "--set", "train.max_steps=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "reviews" / "model").is_dir()
    assert_user_error(lmforge("train", config_file, cwd=tmp_path), "already exists", "--force")


def test_init_prints_a_config_that_trains(tmp_path, reviews_csv):
    result = lmforge("init", "--task", "classification", "--data", reviews_csv)
    assert result.returncode == 0, result.stderr
    assert "text_column: review" in result.stdout and "label_column: sentiment" in result.stdout


def test_user_mistakes_get_one_line_and_exit_2(tmp_path, config_file, reviews_csv):
    assert_user_error(lmforge("train", tmp_path / "none.yaml"), "config file not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2")
    assert_user_error(lmforge("train", bad), "not valid YAML")
    assert_user_error(
        lmforge("train", config_file, "--set", "train.learning_rate=1"),
        "unknown config key 'train.learning_rate'",
    )
    assert_user_error(
        lmforge("train", config_file, "--set", "data.split.test=1.5"), "data.split.test"
    )
    assert_user_error(
        lmforge("train", config_file, "--set", "data.text_column=body", "--out", tmp_path / "r1"),
        "'body'",
        "review",
        "sentiment",
    )
    assert_user_error(
        lmforge(
            "train",
            config_file,
            "--set",
            f"data.path={tmp_path / 'x.csv'}",
            "--out",
            tmp_path / "r2",
        ),
        "not found",
    )
    assert_user_error(
        lmforge("train", config_file, "--resume", "--out", tmp_path / "r3"), "no checkpoint"
    )
    assert_user_error(lmforge("predict", tmp_path, "--input", reviews_csv), "bundle")
