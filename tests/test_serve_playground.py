"""The playground page (GET /) in a real headless Chromium: a person's click-through."""

import shutil

import httpx
import pytest
from generation_support import random_bundle
from serve_support import ARTEFACTS_DIR, auth, running_server, settings

from lmforge.serve.billing import keys
from lmforge.serve.billing.database import open_database

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
def bundle(tiny_classifier):
    return tiny_classifier


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    return random_bundle(tmp_path_factory.mktemp("serve-playground-story") / "model", context=64)


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


def test_playground_streams_a_generation_and_counts_its_tokens(bundle, story, tmp_path):
    db = f"sqlite:///{tmp_path / 'playground.db'}"
    database = open_database(db)
    key, reference = keys.create_key(database, "browser"), keys.create_key(database, "reference")
    prompt, sampling = "the cat sat on", {"max_tokens": 8, "temperature": 0, "seed": 3}
    serve = settings(bundle, db, f"story={story}")
    with running_server(serve) as url, sync_api.sync_playwright() as playwright:
        # What the page should show: the same request, not streamed, under another key.
        whole = httpx.post(
            url + "/v1/completions",
            json={"model": "story", "prompt": prompt, **sampling},
            headers=auth(reference),
            timeout=60,
        )
        assert whole.status_code == 200, whole.text
        expected, usage = whole.json()["choices"][0]["text"], whole.json()["usage"]
        assert expected and usage["completion_tokens"] > 0

        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 960, "height": 900})
            page.goto(url + "/")
            page.fill("#key", key)
            page.click("#connect")
            page.wait_for_selector("#model option[value='story']", state="attached")
            page.select_option("#model", "story")
            assert page.inner_text("#task") == "generation"
            assert page.inner_text("#run") == "Generate" and page.is_enabled("#run")
            assert page.is_visible("#generation-options")
            assert page.inner_text("#error") == ""

            page.fill("#text", prompt)
            page.fill("#max-tokens", str(sampling["max_tokens"]))
            page.fill("#temperature", str(sampling["temperature"]))
            page.fill("#seed", str(sampling["seed"]))
            page.click("#run")
            page.wait_for_selector("#generated[data-done='true']")

            assert page.inner_text("#error") == ""
            assert page.text_content("#generated .prompt") == prompt
            assert page.text_content("#generated .completion") == expected
            assert page.get_attribute("#generated", "data-finish") in {"length", "stop"}
            assert page.inner_text("#tokens") == (
                f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens"
            )
            requests = "#usage-table tr[data-field='requests'] td.n"
            page.wait_for_function(f"document.querySelector(\"{requests}\")?.textContent === '1'")
            assert page.inner_text("#usage-table tr[data-field='key'] td.n") == "browser"
            completion = "#usage-table tr[data-field='completion tokens'] td.n"
            assert int(page.inner_text(completion)) == usage["completion_tokens"]

            # Back to the classifier: its button and options come back.
            page.select_option("#model", "reviews")
            assert page.inner_text("#run") == "Classify"
            assert not page.is_visible("#generation-options")
            page.select_option("#model", "story")
            page.fill("#text", prompt)
            page.click("#run")
            page.wait_for_selector("#generated[data-done='true']")

            ARTEFACTS_DIR.mkdir(parents=True, exist_ok=True)
            shot = ARTEFACTS_DIR / "playground-generate.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
