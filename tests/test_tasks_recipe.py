"""The seam between the verbs and the tasks: a task of this test's own (predicting a number from
a text: twice its word count, plus one) goes through train, evaluate, predict and the bundle
round trip with nothing in lmforge changed but its entry in TASKS."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_model
from torch import nn

import lmforge
from lmforge import pipeline, tasks
from lmforge.config import Config, DataConfig
from lmforge.errors import LmforgeError
from lmforge.tasks.recipe import Evaluated, Prepared, TrainingPlan

pytestmark = pytest.mark.usefixtures("one_thread")


def word_count_rows(n, seed):
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta"]
    return [" ".join(rng.choice(words, size=rng.integers(1, 9))) for _ in range(n)]


def read_rows(path):
    with open(path, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [row["text"] for row in rows], [float(row["target"]) for row in rows]


def features(texts):
    return torch.tensor([[float(len(t.split()))] for t in texts])


class WordCounter:
    """What a toy bundle loads into."""

    def __init__(self, model, meta):
        self.model, self.meta = model, meta

    def predict(self, texts):
        with torch.no_grad():
            values = self.model(features(texts)).squeeze(1).tolist()
        return [{"text": t, "value": v} for t, v in zip(texts, values, strict=True)]


class NoTokenizer:
    def save(self, directory):
        (Path(directory) / "features.json").write_text('{"feature": "word count"}')


def mean_absolute_error(model, texts, targets):
    with torch.no_grad():
        predicted = model(features(texts)).squeeze(1)
    return float((predicted - torch.tensor(targets)).abs().mean())


class WordCountTask:
    name = "word_count"
    val_metrics = ("val_mae",)
    runs_with = "predict"
    quickstart_run = "quickstart-word-count"
    report_kind = "metrics"

    def starter_config(self, data):
        return Config(task=self.name, data=DataConfig(path=data))

    def quickstart_config(self, fast):
        raise NotImplementedError

    def prepare(self, cfg, run_dir, resume, log):
        texts, targets = read_rows(cfg.data.path)
        cut = len(texts) * 3 // 4
        log(f"word counts: {cut} train / {len(texts) - cut} test")
        split = {"train": texts[:cut], "val": [], "test": texts[cut:]}
        parts = {"targets": {"train": targets[:cut], "test": targets[cut:]}}
        return Prepared(cfg, "toy-hash", NoTokenizer(), split, {"rows": len(texts)}, parts)

    def build_model(self, run, run_dir, resume, show_progress, log):
        torch.manual_seed(0)
        return nn.Linear(1, 1)

    def training(self, run, model):
        pairs = list(zip(run.split_texts["train"], run.parts["targets"]["train"], strict=True))

        def collate(items):
            return {"x": features([t for t, _ in items]),
                    "y": torch.tensor([[y] for _, y in items])}

        def loss(model, batch):
            return nn.functional.mse_loss(model(batch["x"]), batch["y"])

        return TrainingPlan(pairs, collate, loss, None, "min")

    def test(self, run, model):
        texts, targets = run.split_texts["test"], run.parts["targets"]["test"]
        baseline = float(np.abs(np.mean(run.parts["targets"]["train"]) - np.array(targets)).mean())
        report = {"n": len(texts), "mae": mean_absolute_error(model, texts, targets),
                  "baselines": {"train_mean": {"mae": baseline}}}
        rows = [{"text": t, "target": y} for t, y in zip(texts, targets, strict=True)]
        return Evaluated(report, rows)

    def summary(self, report):
        return {"mae": report["mae"]}

    def bundle_meta(self, run, model, run_dir):
        return {"task": self.name, "text_column": "text"}

    def load(self, bundle_dir, meta, device):
        model = nn.Linear(1, 1)
        load_model(model, str(Path(bundle_dir) / "model.safetensors"))
        return WordCounter(model, meta)

    def evaluate(self, predictor, bundle_dir, run_dir, data):
        texts, targets = read_rows(data)
        return {"n": len(texts), "mae": mean_absolute_error(predictor.model, texts, targets),
                "data_check": {"source": data}}

    def predict(self, predictor, texts):
        return predictor.predict(texts), f"{len(texts)} word counts"

    def render(self, report, console, title):
        console.print(f"{title}: mae {report['mae']:.3f}")

    def quickstart_notes(self, predictor, bundle_dir):
        return []


def write_table(path, texts):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "target"])
        writer.writerows((t, 2 * len(t.split()) + 1) for t in texts)
    return path


def test_a_task_of_its_own_runs_through_every_verb(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(tasks.TASKS, "word_count", WordCountTask())
    data = write_table(tmp_path / "counts.csv", word_count_rows(400, seed=0))
    config = pipeline.init_config("word_count", data)
    assert "task: word_count" in config
    cfg = {"task": "word_count", "data": {"path": str(data)},
           "train": {"max_steps": 300, "batch_size": 32, "lr": 0.05, "eval_every": 100}}

    result = lmforge.train(cfg, out=tmp_path / "run", show_progress=False)

    assert "word counts: 300 train / 100 test" in capsys.readouterr().err
    report = json.loads((result.run_dir / "eval.json").read_text())
    assert report["mae"] < 0.5 * report["baselines"]["train_mean"]["mae"]
    meta = json.loads((result.bundle_dir / "lmforge.json").read_text())
    assert meta["task"] == "word_count" and meta["metrics"] == {"mae": report["mae"]}
    assert (result.run_dir / "test_predictions.jsonl").is_file()

    counter = lmforge.load(result.bundle_dir)
    (one,) = counter.predict(["alpha beta gamma"])
    assert one["value"] == pytest.approx(7, abs=0.5)

    other = write_table(tmp_path / "other.csv", word_count_rows(50, seed=1))
    again = lmforge.evaluate(result.run_dir, data=other, show=False)
    assert again["n"] == 50 and again["mae"] < 0.5
    assert (result.run_dir / "eval-other.json").is_file()

    texts = tmp_path / "texts.csv"
    texts.write_text("text\nalpha\nalpha beta gamma delta\n", encoding="utf-8")
    lmforge.predict(result.bundle_dir, texts, tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [round(row["value"]) for row in rows] == [3, 9]


class FittedWordCountTask(WordCountTask):
    """The same task with a model fitted in closed form by build_model (least squares, as an
    index or an estimator is built): nothing for the training loop to do."""

    def build_model(self, run, run_dir, resume, show_progress, log):
        x = features(run.split_texts["train"])
        y = torch.tensor(run.parts["targets"]["train"])[:, None]
        design = torch.cat([x, torch.ones_like(x)], dim=1)
        solution = torch.linalg.lstsq(design, y).solution  # (2, 1): slope, intercept
        model = nn.Linear(1, 1)
        with torch.no_grad():
            model.weight.copy_(solution[:1].T)
            model.bias.copy_(solution[1])
        return model

    def training(self, run, model):
        return None


def test_a_task_whose_model_is_built_whole_skips_the_training_loop(tmp_path, monkeypatch):
    monkeypatch.setitem(tasks.TASKS, "word_count", FittedWordCountTask())
    data = write_table(tmp_path / "counts.csv", word_count_rows(200, seed=2))
    result = lmforge.train({"task": "word_count", "data": {"path": str(data)}},
                           out=tmp_path / "run", show_progress=False)
    assert result.steps == 0 and not (result.run_dir / "checkpoints").exists()
    report = json.loads((result.run_dir / "eval.json").read_text())
    assert report["mae"] < 1e-3  # the targets are exactly 2 * words + 1
    (one,) = lmforge.load(result.bundle_dir).predict(["alpha beta"])
    assert one["value"] == pytest.approx(5, abs=1e-3)


class CountsTableTask(WordCountTask):
    """The same task reading a table of numbers (column n_words) instead of text: a second
    kind of input to one task, the way a feature table or images join classification."""

    @staticmethod
    def as_texts(path):
        with open(path, encoding="utf-8") as handle:
            return [" ".join(["w"] * int(row["n_words"])) for row in csv.DictReader(handle)]

    def starter_config(self, data):
        return Config(task=self.name, data=DataConfig(path=data, inputs="table"))

    def prepare(self, cfg, run_dir, resume, log):
        texts = self.as_texts(cfg.data.path)
        targets = [2.0 * len(t.split()) + 1 for t in texts]
        cut = len(texts) * 3 // 4
        split = {"train": texts[:cut], "val": [], "test": texts[cut:]}
        parts = {"targets": {"train": targets[:cut], "test": targets[cut:]}}
        return Prepared(cfg, "toy-hash", NoTokenizer(), split, {"rows": len(texts)}, parts)

    def bundle_meta(self, run, model, run_dir):
        return {**super().bundle_meta(run, model, run_dir), "inputs": "table"}

    def read_inputs(self, predictor, path):
        return self.as_texts(path)


def write_counts(path, counts):
    path.write_text("n_words\n" + "".join(f"{n}\n" for n in counts), encoding="utf-8")
    return path


def test_a_second_kind_of_input_is_detected_trained_loaded_and_predicted(tmp_path, monkeypatch):
    monkeypatch.setitem(tasks.TASKS, "word_count", WordCountTask())
    monkeypatch.setitem(tasks.INPUT_RECIPES, ("word_count", "table"), CountsTableTask())
    monkeypatch.setitem(tasks.INPUT_DETECTORS, "table",
                        lambda cfg: Path(cfg.data.path).name.startswith("counts"))
    data = write_counts(tmp_path / "counts.csv", [1 + i % 7 for i in range(200)])
    assert "inputs: table" in pipeline.init_config("word_count", data)

    result = lmforge.train({"task": "word_count", "data": {"path": str(data)},
                            "train": {"max_steps": 300, "batch_size": 32, "lr": 0.05}},
                           out=tmp_path / "run", show_progress=False)

    assert json.loads((result.bundle_dir / "lmforge.json").read_text())["inputs"] == "table"
    assert isinstance(lmforge.load(result.bundle_dir), WordCounter)
    lmforge.predict(result.bundle_dir, write_counts(tmp_path / "counts-new.csv", [2, 5]),
                    tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [round(row["value"]) for row in rows] == [5, 11]


def test_a_bundle_of_a_kind_of_input_its_task_does_not_read_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(tasks.TASKS, "word_count", FittedWordCountTask())
    data = write_table(tmp_path / "words.csv", word_count_rows(100, seed=3))
    result = lmforge.train({"task": "word_count", "data": {"path": str(data)}},
                           out=tmp_path / "run", show_progress=False)
    meta_path = result.bundle_dir / "lmforge.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "inputs": "image"}))
    with pytest.raises(LmforgeError, match="does not read image inputs; it reads: text"):
        lmforge.load(result.bundle_dir)


class ConfiguredWordCountTask(WordCountTask):
    """The task with defaults and refusals of its own, given at config time."""

    def configure(self, cfg):
        if cfg.model.arch == "gpt":
            raise ValueError("model.arch 'gpt' cannot count words")
        if "lr" not in cfg.train.model_fields_set:
            cfg.train.lr = 0.05


def test_a_task_fills_its_own_config_defaults_and_refuses_what_it_cannot_use(monkeypatch):
    from lmforge.config import load_config

    monkeypatch.setitem(tasks.TASKS, "word_count", ConfiguredWordCountTask())
    assert load_config({"task": "word_count"}).train.lr == 0.05
    assert load_config({"task": "word_count", "train": {"lr": 0.01}}).train.lr == 0.01
    with pytest.raises(LmforgeError, match="cannot count words"):
        load_config({"task": "word_count", "model": {"arch": "gpt"}})
