"""report.html: written by train, evaluate and `lmforge report`, self-contained, and it opens in
headless Chromium with no console error and every image decoded (a screenshot is kept)."""

import base64
import csv
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_reviews, tiny_config
from PIL import Image

import lmforge
from lmforge import pipeline
from lmforge.evaluation.html_report import expected_calibration_error

pytestmark = pytest.mark.usefixtures("one_thread")
CHROMIUM = "/usr/bin/chromium"
ARTEFACTS = Path(__file__).parent / "artefacts"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html-report")
    data = tmp / "reviews.csv"
    with open(data, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment", "region"])
        for i, (text, label) in enumerate(make_reviews()):
            writer.writerow([f"<b>{text}</b>" if i % 7 else text, label, "ab"[i % 2]])
    cfg = tiny_config(data, max_steps=10, eval_every=5)
    cfg["eval"]["slices"] = ["region"]
    return lmforge.train(cfg, out=tmp / "run", show_progress=False).run_dir


def test_training_writes_a_self_contained_report_with_every_view(run_dir):
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    for title in ["Learning curves", "Test metrics beside the baselines", "Per class",
                  "Confusion matrix", "Calibration", "Precision–recall curves", "Worst errors",
                  "Slices", "Data", "Provenance"]:
        assert f">{title}" in page, title
    assert "tfidf_logreg" in page and "ECE " in page
    # Nothing is fetched: no scripts, no links, images are inline PNGs that decode.
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'src="(?!data:image/png;base64,)', page)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 5
    for data in images:
        assert Image.open(io.BytesIO(base64.b64decode(data))).size[0] > 50


def test_report_and_evaluate_rewrite_it(run_dir):
    (run_dir / "report.html").unlink()
    assert pipeline.report(run_dir) == run_dir / "report.html"
    (run_dir / "report.html").unlink()
    pipeline.evaluate(run_dir, show=False)
    assert (run_dir / "report.html").is_file()


def test_expected_calibration_error_of_a_calibrated_and_an_overconfident_model():
    probs = np.array([[0.9, 0.1]] * 10)
    gold = np.array([0] * 9 + [1])  # 90% confident, 90% right
    assert expected_calibration_error(probs, gold)[0] == pytest.approx(0.0)
    gold = np.array([0] * 5 + [1] * 5)  # 90% confident, 50% right
    assert expected_calibration_error(probs, gold)[0] == pytest.approx(0.4)


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"no {CHROMIUM} (scripts/test-services.sh "
                    "installs it)")
def test_the_report_opens_in_chromium_without_errors_and_every_image_decodes(run_dir):
    sync_api = pytest.importorskip("playwright.sync_api")
    errors = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:"))
                    else errors.append(f"fetched {r.url}"))
            page.goto((run_dir / "report.html").as_uri())
            widths = page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            assert widths and all(w > 0 for w in widths), widths
            ARTEFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTEFACTS / "report-classification.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
