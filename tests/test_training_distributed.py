"""Crash safety and scale-out as a user runs them: kill -9 then --resume, and torchrun."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import make_reviews
from safetensors.torch import load_file

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def config(tmp_path):
    import csv

    data = tmp_path / "reviews.csv"
    with open(data, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment"])
        writer.writerows(make_reviews(400))
    cfg = {
        "data": {"path": str(data), "text_column": "review", "label_column": "sentiment"},
        "tokenizer": {"vocab_size": 120},
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_length": 24},
        "train": {"max_steps": 60, "batch_size": 16, "lr": 0.003, "eval_every": 10},
        "eval": {"bootstrap": 0},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg))
    return path


def lmforge(*args):
    return [sys.executable, "-m", "lmforge", *map(str, args)]


def torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", *map(str, args), "-m", "lmforge"]


def wait_for(predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def last_step(run):
    meta = run / "checkpoints" / "last" / "meta.json"
    return json.loads(meta.read_text())["loop"]["step"] if meta.exists() else 0


def final_weights(run):
    return load_file(str(run / "model" / "model.safetensors"))


def test_kill_9_then_resume_gives_bit_identical_weights(tmp_path, config):
    slow = ["--set", "train.max_steps=400", "--set", "train.eval_every=20"]
    straight = subprocess.run(lmforge("train", config, "--out", tmp_path / "a", *slow),
                              env=ENV, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr
    victim = subprocess.Popen(lmforge("train", config, "--out", tmp_path / "b", *slow), env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: last_step(tmp_path / "b") >= 40)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "b" / "model").exists()  # it really died mid-run
    resumed = subprocess.run(lmforge("train", config, "--out", tmp_path / "b", "--resume", *slow),
                             env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step" in resumed.stderr
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert all((a[k] == b[k]).all() for k in a)
    assert (json.loads((tmp_path / "a" / "eval.json").read_text())["accuracy"]
            == json.loads((tmp_path / "b" / "eval.json").read_text())["accuracy"])


def train_losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if row["kind"] == "train"]


@pytest.mark.timeout(600)
def test_two_processes_reach_the_single_process_metrics_with_ddp_and_with_fsdp(tmp_path, config):
    one = subprocess.run(lmforge("train", config, "--out", tmp_path / "one"), env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    runs = {}
    for strategy in ("ddp", "fsdp"):
        runs[strategy] = subprocess.run(
            lmforge("train", config, "--out", tmp_path / strategy, "--nproc", 2,
                    "--set", f"train.strategy={strategy}"),
            env=ENV, capture_output=True, text=True, timeout=600)
        assert runs[strategy].returncode == 0, runs[strategy].stderr
        assert runs[strategy].stderr.count("run written to") == 1  # only rank 0 prints, writes
    acc = {n: json.loads((tmp_path / n / "eval.json").read_text())["accuracy"]
           for n in ("one", "ddp", "fsdp")}
    assert acc["one"] >= 0.9 and abs(acc["one"] - acc["ddp"]) <= 0.1
    # sharding changes where the weights live, not the arithmetic: the same losses as DDP
    ddp, fsdp = train_losses(tmp_path / "ddp"), train_losses(tmp_path / "fsdp")
    assert len(ddp) == len(fsdp) >= 5
    assert max(abs(a - b) for a, b in zip(ddp, fsdp, strict=True)) < 1e-3, (ddp, fsdp)
    assert abs(acc["fsdp"] - acc["ddp"]) <= 0.02
    shards = tmp_path / "fsdp" / "checkpoints" / "last" / "shards"
    assert shards.is_dir() and len(list(shards.glob("*.distcp"))) == 2  # one file per process
    whole, reference = final_weights(tmp_path / "fsdp"), final_weights(tmp_path / "ddp")
    assert {k: v.shape for k, v in whole.items()} == {k: v.shape for k, v in reference.items()}


@pytest.mark.timeout(600)
def test_fsdp_killed_with_kill_9_resumes_in_fewer_processes(tmp_path, config):
    run = tmp_path / "run"
    slow = ["--set", "train.max_steps=400", "--set", "train.eval_every=20",
            "--set", "train.strategy=fsdp"]
    victim = subprocess.Popen(lmforge("train", config, "--out", run, "--nproc", 2, *slow),
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    wait_for(lambda: last_step(run) >= 40, timeout=300)
    os.killpg(victim.pid, signal.SIGKILL)  # torchrun and both workers, at once
    victim.wait()
    assert not (run / "model").exists()
    resumed = subprocess.run(lmforge("train", config, "--out", run, "--resume", *slow[:4]),
                             env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step" in resumed.stderr and "not bit-identically" in resumed.stderr
    assert last_step(run) == 400 and (run / "eval.json").is_file()
    assert json.loads((run / "eval.json").read_text())["accuracy"] >= 0.9


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_localhost_with_c10d_rendezvous(tmp_path, config):
    port = free_port()
    nodes = [
        subprocess.Popen(
            torchrun("--nnodes", 2, "--nproc-per-node", 1, "--rdzv-backend", "c10d",
                     "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "lmforge-test")
            + ["train", str(config), "--out", str(tmp_path / "run")],
            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), outputs
    assert (tmp_path / "run" / "eval.json").is_file()


def test_torchrun_restarts_all_ranks_after_one_is_killed_and_they_resume(tmp_path, config):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        torchrun("--standalone", "--nproc-per-node", 2, "--max-restarts", 1)
        + ["train", str(config), "--out", str(run), "--set", "train.max_steps=400",
           "--set", "train.eval_every=20"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: last_step(run) >= 40)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    victim = int(workers.stdout.split()[-1])
    os.kill(victim, signal.SIGKILL)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    assert "resuming" in output and "resumed from step" in output
    assert last_step(run) == 400 and (run / "eval.json").is_file()
