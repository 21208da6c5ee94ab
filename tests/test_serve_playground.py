"""The playground page (GET /) in a real headless Chromium: a person's click-through."""

import shutil

import pytest
from serve_support import ARTEFACTS_DIR, running_server, settings, train_tiny_bundle

from lmforge.serve import keys
from lmforge.serve.db import open_database

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

if not shutil.which(CHROMIUM):
    pytest.skip(
        f"no {CHROMIUM}: the playground's browser test needs Debian's chromium "
        "(scripts/test-services.sh installs it)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return train_tiny_bundle(tmp_path_factory.mktemp("serve-playground"))


def test_playground_classifies_and_shows_the_keys_usage(bundle, tmp_path):
    db = f"sqlite:///{tmp_path / 'playground.db'}"
    key = keys.create_key(open_database(db), "browser")
    with running_server(settings(bundle, db)) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 960, "height": 900})
            page.goto(url + "/")
            assert page.title() == "lmforge playground"

            page.fill("#key", "lmf-wrong")
            page.click("#connect")
            page.wait_for_selector("#error:has-text('401')")

            page.fill("#key", key)
            page.click("#connect")
            page.wait_for_selector("#model option[value='reviews']", state="attached")
            page.select_option("#model", "reviews")
            page.fill("#text", "这个 产品 很好 推荐")
            page.click("#run")
            page.wait_for_selector("#result .prob.best")

            assert page.inner_text("#result .prob.best .label") == "pos"
            labels = page.eval_on_selector_all(
                "#result .prob", "rows => rows.map(r => r.dataset.label)"
            )
            assert sorted(labels) == ["neg", "pos"]
            percents = page.eval_on_selector_all(
                "#result .prob .p", "cells => cells.map(c => parseFloat(c.textContent))"
            )
            assert sum(percents) == pytest.approx(100, abs=0.2)
            requests = "#usage-table tr[data-field='requests'] td.n"
            page.wait_for_function(f"document.querySelector(\"{requests}\")?.textContent === '1'")
            assert page.inner_text("#usage-table tr[data-field='key'] td.n") == "browser"
            prompt = page.inner_text("#usage-table tr[data-field='prompt tokens'] td.n")
            assert int(prompt) > 0 and page.inner_text("#tokens") == f"{prompt} tokens"

            ARTEFACTS_DIR.mkdir(parents=True, exist_ok=True)
            shot = ARTEFACTS_DIR / "playground-classify.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
