"""Saving and finding a bundle: a save killed at any instant leaves the old bundle or the new
one, and every command finds it, given the bundle or the run directory."""

import json
import os
import shutil

import pytest
import torch
from generation_support import random_bundle

from lmforge.bundle import META_FILE, BundleLocation, load, locate_bundle, save_bundle
from lmforge.errors import LmforgeError

pytestmark = pytest.mark.usefixtures("one_thread")


class Crash(Exception):
    pass


class Faults:
    """Counts the renames, removals and fsyncs of a save; armed with die_at=k, the k-th of them
    and every one after it raise Crash, as if the process had died there."""

    def __init__(self, monkeypatch):
        self.calls, self.die_at = [], None
        for owner, name in [(os, "rename"), (os, "replace"), (os, "fsync"), (shutil, "rmtree")]:
            monkeypatch.setattr(owner, name, self.counted(getattr(owner, name), name))

    def counted(self, real, label):
        def call(*args, **kwargs):
            if self.die_at is not None:
                self.calls.append(label)
                if len(self.calls) >= self.die_at:
                    raise Crash(label)
            return real(*args, **kwargs)

        return call

    def arm(self, die_at):
        self.calls, self.die_at = [], die_at


def weights(bundle_dir):
    return load(bundle_dir, device="cpu").model.state_dict()


def same(a, b):
    return all(torch.equal(a[key], b[key]) for key in a)


def test_a_save_killed_at_any_step_leaves_the_old_or_the_new_bundle(tmp_path, monkeypatch):
    old = weights(random_bundle(tmp_path / "old" / "model", seed=0))
    new = weights(random_bundle(tmp_path / "new" / "model", seed=1))
    faults = Faults(monkeypatch)
    random_bundle(tmp_path / "count" / "model", seed=0)
    faults.arm(die_at=10**9)  # count the steps of a save over an existing bundle
    random_bundle(tmp_path / "count" / "model", seed=1)
    steps = faults.calls
    assert steps.count("rename") == 2 and steps.count("fsync") >= 4
    for k in range(1, len(steps) + 1):
        run_dir = tmp_path / str(k)
        random_bundle(run_dir / "model", seed=0)
        faults.arm(die_at=k)
        with pytest.raises(Crash):
            random_bundle(run_dir / "model", seed=1)
        faults.arm(die_at=None)
        renamed = steps[: k - 1].count("rename")  # the renames done before the crash
        expected = new if renamed == 2 else old
        target = run_dir if k % 2 else run_dir / "model"  # a run directory or the bundle
        found = locate_bundle(target)
        assert found.bundle_dir == run_dir / "model", (k, steps[k - 1])
        assert same(weights(found.bundle_dir), expected), (k, steps[k - 1], renamed)
        random_bundle(run_dir / "model", seed=1)  # the next save finishes and tidies up
        assert sorted(p.name for p in run_dir.iterdir()) == ["model"], k
        assert same(weights(run_dir / "model"), new)


def test_loading_a_bundle_left_between_the_renames_restores_it(tmp_path):
    bundle = random_bundle(tmp_path / "model", seed=0)
    old = weights(bundle)
    bundle.rename(tmp_path / "model.prev")  # as left by a save killed between its renames
    random_bundle(tmp_path / "other", seed=1).rename(tmp_path / "model.tmp")
    assert same(weights(bundle), old)  # lmforge.load put it back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.tmp"]


def test_a_save_that_fails_keeps_the_old_bundle_and_leaves_nothing_behind(tmp_path, monkeypatch):
    bundle = random_bundle(tmp_path / "model", seed=0)
    before = weights(bundle)
    tokenizer = load(bundle, device="cpu").tokenizer

    def full_disk(directory):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tokenizer, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_bundle(bundle, torch.nn.Linear(2, 2), tokenizer, {"task": "generation"})
    assert same(weights(bundle), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_locate_bundle_takes_a_bundle_or_a_run_directory(tmp_path):
    run_dir = tmp_path / "runs" / "reviews"
    bundle = random_bundle(run_dir / "model")
    assert locate_bundle(run_dir) == BundleLocation(bundle, run_dir)
    assert locate_bundle(bundle) == BundleLocation(bundle, None)  # lmforge.json names no run
    meta = json.loads((bundle / META_FILE).read_text(encoding="utf-8"))
    meta["run"] = {"dir": str(run_dir)}
    (bundle / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    assert locate_bundle(bundle).run_dir is None  # the run has no config.yaml left
    (run_dir / "config.yaml").write_text("task: generation\n")
    assert locate_bundle(bundle).run_dir == run_dir
    with pytest.raises(LmforgeError, match="not found: .*nowhere"):
        locate_bundle(tmp_path / "nowhere")
    with pytest.raises(LmforgeError, match="neither a run directory nor a bundle"):
        locate_bundle(tmp_path / "runs")
