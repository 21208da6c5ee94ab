"""Image classification: images read (a label-folder tree, a table of paths, builtin:digits) with
unreadable and repeated images counted, a small CNN trained through the loop, evaluated beside
its baselines, predicted on files, resumed exactly, and exported to ONNX with its parity check."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import lmforge
from lmforge import pipeline
from lmforge.config import DataConfig, load_config
from lmforge.data.images import ImagePreprocess, read_image_rows
from lmforge.errors import LmforgeError
from lmforge.tasks import inputs_of
from lmforge.tasks.images import augment

pytestmark = pytest.mark.usefixtures("one_thread")


def shape_image(kind: str, rng: np.random.Generator, size: int = 12) -> Image.Image:
    """A noisy picture of a horizontal bar, a vertical bar or a cross, at a random place."""
    pixels = rng.integers(0, 60, (size, size)).astype(np.uint8)
    at = rng.integers(3, size - 3)
    if kind in ("horizontal", "cross"):
        pixels[at - 1:at + 1, 1:-1] = 255
    if kind in ("vertical", "cross"):
        pixels[1:-1, at - 1:at + 1] = 255
    return Image.fromarray(pixels, mode="L")


def write_shapes(root, n_per_label=40, seed=0):
    rng = np.random.default_rng(seed)
    for kind in ("horizontal", "vertical", "cross"):
        (root / kind).mkdir(parents=True)
        for i in range(n_per_label):
            shape_image(kind, rng).save(root / kind / f"{i}.png")
    return root


def image_config(path, **train):
    return {"task": "classification", "data": {"path": str(path)},
            "model": {"arch": "cnn", "channels": [8, 16], "dropout": 0.0},
            "train": {"max_steps": 60, "batch_size": 16, "lr": 5e-3, "eval_every": 30, **train},
            "eval": {"bootstrap": 50}}


def test_unreadable_truncated_and_repeated_images_are_counted_with_their_paths(tmp_path):
    root = write_shapes(tmp_path / "shapes", n_per_label=4)
    (root / "cross" / "notes.txt").write_text("not an image")
    (root / "cross" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    whole = (root / "vertical" / "0.png").read_bytes()
    (root / "vertical" / "cut.png").write_bytes(whole[: len(whole) // 2])
    cross = (root / "cross" / "0.png").read_bytes()
    (root / "cross" / "again.png").write_bytes(cross)
    (root / "vertical" / "same-bytes.png").write_bytes(cross)

    rows = read_image_rows(str(root), DataConfig(path=str(root)))

    report = rows.report()
    assert report["rows_kept"] == 12
    assert report["dropped"]["unreadable"] == 2
    assert sorted(report["examples"]["unreadable"]) == ["cross/broken.png", "vertical/cut.png"]
    assert report["dropped"]["duplicate"] == 1  # same bytes, same label
    assert report["dropped"]["conflicting_labels"] == 1  # same bytes, another label
    assert report["ignored_files"] == {"count": 1, "examples": ["cross/notes.txt"]}


def test_a_table_of_image_paths_is_read_and_a_missing_file_counted(tmp_path):
    write_shapes(tmp_path / "shapes", n_per_label=3)
    lines = ["image,label"] + [f"shapes/{kind}/{i}.png,{kind}"
                               for kind in ("horizontal", "vertical") for i in range(3)]
    table = tmp_path / "images.csv"
    table.write_text("\n".join([*lines, "shapes/nowhere.png,vertical"]) + "\n")
    cfg = load_config({"data": {"path": str(table)}})
    assert inputs_of(cfg) == "image" and cfg.model.arch == "cnn"  # detected; cnn the default
    rows = read_image_rows(str(table), cfg.data)
    assert len(rows.names) == 6
    assert rows.report()["examples"]["unreadable"] == ["shapes/nowhere.png"]


def test_augmentation_crops_and_flips_in_training_and_never_at_evaluation():
    torch.manual_seed(0)
    batch = torch.arange(2 * 64, dtype=torch.float32).view(2, 1, 8, 8)
    assert not torch.equal(augment(batch, flip=True), batch)
    preprocess = ImagePreprocess(8, 1, [0.0], [1.0])
    pixels = torch.from_numpy(preprocess.arrays([Image.new("L", (8, 8), 200)]))
    assert torch.allclose(preprocess.normalize(pixels), torch.full((1, 1, 8, 8), 200 / 255))


@pytest.mark.timeout(240)
def test_a_cnn_learns_digits_well_above_its_baselines_in_seconds(tmp_path):
    result = lmforge.train({"task": "classification", "data": {"path": "builtin:digits"},
                            "model": {"channels": [16, 32]},
                            "train": {"max_steps": 150, "batch_size": 32, "eval_every": 150},
                            "eval": {"bootstrap": 0}},
                           out=tmp_path / "digits", show_progress=False)
    report = result.eval_report
    assert report["accuracy"] > 0.9
    assert report["accuracy"] > report["baselines"]["majority"]["accuracy"] + 0.7
    assert "pixel_logreg" in report["baselines"]
    meta = json.loads((result.bundle_dir / "lmforge.json").read_text())
    assert meta["inputs"] == "image" and meta["arch"] == "cnn"
    data_report = json.loads((result.run_dir / "data_report.json").read_text())
    assert data_report["image"]["size"] == 8 and data_report["rows_read"] == 1797


@pytest.mark.timeout(300)
def test_images_train_evaluate_predict_resume_and_export(tmp_path):
    root = write_shapes(tmp_path / "shapes")
    result = lmforge.train(image_config(root), out=tmp_path / "run", show_progress=False)
    assert result.eval_report["accuracy"] >= 0.8

    other = write_shapes(tmp_path / "other", n_per_label=10, seed=7)
    again = lmforge.evaluate(result.run_dir, data=other, show=False)
    assert again["n"] == 30 and again["accuracy"] >= 0.8
    assert (result.run_dir / "eval-other.json").is_file()

    lmforge.predict(result.bundle_dir, other / "cross", tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and sum(row["label"] == "cross" for row in rows) >= 8
    assert rows[0]["image"].endswith(".png")

    # resume: 30 steps, then 30 more, give the weights of 60 straight
    half = lmforge.train(image_config(root), out=tmp_path / "half", show_progress=False,
                         on_eval=lambda step, metrics: step >= 30)  # stopped at step 30
    assert half.stopped and half.steps == 30
    resumed = lmforge.train(image_config(root), out=tmp_path / "half", resume=True,
                            show_progress=False)
    assert resumed.resumed_from == 30
    straight = lmforge.load(result.bundle_dir).model.state_dict()
    for name, tensor in lmforge.load(resumed.bundle_dir).model.state_dict().items():
        assert torch.equal(tensor, straight[name]), name

    report = pipeline.export(result.bundle_dir, out=tmp_path / "onnx")
    assert report["check"]["max_abs_logit_diff"] < 1e-4
    onnx = lmforge.load(tmp_path / "onnx")
    images = [Image.open(other / "cross" / f"{i}.png") for i in range(3)]
    assert [r["label"] for r in onnx.predict(images)] == [
        r["label"] for r in lmforge.load(result.bundle_dir).predict(images)]


def test_predict_on_a_bundle_names_an_unreadable_input(tmp_path):
    with pytest.raises(LmforgeError, match="not found"):
        from lmforge.data.images import read_unlabelled_images

        read_unlabelled_images(str(tmp_path / "missing.png"))


@pytest.mark.timeout(240)
def test_classify_serves_images_as_base64_keyed_and_metered(tmp_path, sqlite_url):
    import base64
    import io

    from serve_support import app_client, auth, settings

    from lmforge.serve.billing import keys
    from lmforge.serve.billing.database import open_database

    root = write_shapes(tmp_path / "shapes", n_per_label=20)
    bundle = lmforge.train(image_config(root, max_steps=40, eval_every=40), out=tmp_path / "run",
                           show_progress=False).bundle_dir
    secret = keys.create_key(open_database(sqlite_url), "images", quota_tokens=100)
    png = io.BytesIO()
    shape_image("cross", np.random.default_rng(5)).save(png, format="PNG")
    image = base64.b64encode(png.getvalue()).decode()
    with app_client(settings(bundle, sqlite_url)) as client:
        def classify(**body):
            return client.post("/v1/classify", headers=auth(secret), json={"model": "run", **body})

        assert client.post("/v1/classify", json={"model": "run", "input": image}).status_code == 401
        answer = classify(input=[image, f"data:image/png;base64,{image}"])
        assert answer.status_code == 200, answer.text
        rows = answer.json()["data"]
        assert len(rows) == 2 and rows[0]["label"] == rows[1]["label"]
        assert set(rows[0]["probs"]) == {"cross", "horizontal", "vertical"}
        assert answer.json()["usage"]["prompt_tokens"] == 2
        not_image = base64.b64encode(b"plain words, no picture").decode()
        refused = classify(input=not_image)
        assert refused.status_code == 422 and "not an image" in refused.json()["error"]["message"]
        assert classify(input="%%% not base64").status_code == 422
        usage = client.get("/v1/usage", headers=auth(secret)).json()
        assert usage["prompt_tokens"] == 2 and usage["requests"] == 3


@pytest.mark.timeout(240)
def test_a_pretrained_image_model_is_fine_tuned_and_its_bundle_loads_in_transformers(tmp_path):
    from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    backbone = tmp_path / "tiny-vit"
    ViTForImageClassification(ViTConfig(
        image_size=12, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64)).save_pretrained(backbone)
    root = write_shapes(tmp_path / "shapes", n_per_label=30)
    cfg = image_config(root, max_steps=50, eval_every=50, lr=3e-3)
    cfg["model"] = {"arch": "pretrained", "pretrained": str(backbone)}
    cfg["data"]["augment"] = "none"
    result = lmforge.train(cfg, out=tmp_path / "run", show_progress=False)

    assert result.eval_report["accuracy"] > result.eval_report["baselines"]["majority"]["accuracy"]
    meta = json.loads((result.bundle_dir / "lmforge.json").read_text())
    assert meta["arch"] == "pretrained" and meta["inputs"] == "image"
    hf = AutoModelForImageClassification.from_pretrained(result.bundle_dir)
    assert hf.config.id2label == {0: "cross", 1: "horizontal", 2: "vertical"}
    images = [shape_image("cross", np.random.default_rng(9)) for _ in range(2)]
    rows = lmforge.load(result.bundle_dir).predict(images)  # grey images read as RGB
    assert len(rows) == 2 and rows[0]["label"] in hf.config.id2label.values()
