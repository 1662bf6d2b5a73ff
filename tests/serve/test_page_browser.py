"""The page at `/` in a real browser: Debian's chromium, headless, driven by Selenium through Debian's
chromedriver (no browser download). It opens the page with the node's token, uploads a real X-ray,
waits for the reading and checks it against `edgecxr predict`, sees the heatmap load, uploads a skull
film and sees the refusal, and checks the page fits a phone-sized screen without sideways scrolling.
EDGECXR_SCREENSHOT=path.png saves what the browser shows (the README's picture)."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.hostile import write_dicom
from tests.serve.harness import study as _study
from tests.serve.harness import xray as _xray
from tests.serve.test_http_node import TOKEN, HttpNode, _files, _predict

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        if os.environ.get("CI") == "true":
            pytest.fail("chromium and chromium-driver are missing: `make serve-deps` installs them")
        pytest.skip("chromium and chromium-driver are missing (make serve-deps)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,1000"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


def _upload(d, path, timeout=90):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    old = d.find_elements(By.ID, "call")
    d.execute_script("document.getElementById('file').hidden = false; document.getElementById('result').innerHTML='';")
    d.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(d, timeout).until(ec.presence_of_element_located((By.ID, "call")))
    return old


def test_the_page_reads_an_xray_and_shows_a_refusal(browser, bundles, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    node = HttpNode(bundles["nuc-int8"], tmp_path / "spool", tmp_path)
    node.start()
    try:
        d = browser
        d.get(node.url + "/")
        assert "token" in d.page_source.lower()  # no token: the login form, not the page
        d.get(f"{node.url}/?token={TOKEN}")
        assert "not a diagnosis" in d.find_element(By.ID, "warn").text.lower()
        f = _files()[3]
        want = _predict(bundles["nuc-int8"], [f])[str(f)]
        _upload(d, f)
        assert d.find_element(By.ID, "call").text == want["label"]
        assert abs(float(d.find_element(By.ID, "prob").text) - want["prob"]) < 1e-4
        WebDriverWait(d, 30).until(lambda x: x.execute_script(
            "const i=document.getElementById('heatmap'); return i && i.complete && i.naturalWidth > 0;"))
        # the latest readings list it, and the health panel says ready
        WebDriverWait(d, 30).until(lambda x: want["label"] in x.find_element(By.ID, "latest").text)
        assert d.find_element(By.ID, "ready").text == "ready"
        assert "not signed" in d.find_element(By.ID, "bundle").text
        if os.environ.get("EDGECXR_SCREENSHOT"):
            d.save_screenshot(os.environ["EDGECXR_SCREENSHOT"])
        # a skull film: the page shows the refusal and its reason
        skull = write_dicom(tmp_path / "skull.dcm", _xray("NORMAL"), BodyPartExamined="SKULL", **_study())
        _upload(d, skull)
        assert d.find_element(By.ID, "call").text == "NOT READ"
        assert "CHEST" in d.find_element(By.ID, "reason").text
        # a phone-sized screen: nothing runs off the side
        d.set_window_size(390, 844)
        d.get(node.url + "/")
        assert d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        assert d.find_element(By.ID, "drop").is_displayed()
    finally:
        node.stop()
