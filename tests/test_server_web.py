"""The web page in a real headless Chromium (Selenium): upload the sample video, ask, watch
the answer stream in, see the timings; a screenshot is kept under pytest's tmp folder."""

from __future__ import annotations

import shutil

import pytest

from server_helpers import API_KEY, QUESTION, shared_media, shared_server

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _browser(profile):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1280,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (apt-get)")
def test_upload_ask_stream_and_timings(tmp_path_factory, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    server = shared_server(tmp_path_factory)
    video = shared_media(tmp_path_factory) / "a.mp4"
    driver = _browser(tmp_path / "profile")
    try:
        wait = WebDriverWait(driver, 120, poll_frequency=0.05)
        driver.get(server.url + "/")
        driver.find_element(By.ID, "apikey").send_keys(API_KEY + Keys.TAB)  # change event: reload the lists
        wait.until(lambda d: server.model in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "file").send_keys(str(video))
        driver.find_element(By.ID, "upload").click()
        wait.until(lambda d: "uploaded as video-" in d.find_element(By.ID, "status").text)
        video_id = driver.find_element(By.ID, "status").text.split()[2]
        # Count the answer's updates: streamed pieces arrive one by one.
        driver.execute_script("window.updates = 0; new MutationObserver(() => window.updates++)"
                              ".observe(document.getElementById('chat'), {childList: true, subtree: true, characterData: true});")
        driver.find_element(By.ID, "question").send_keys(QUESTION)
        driver.find_element(By.ID, "ask").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant table.timings"))
        answer = driver.find_element(By.CSS_SELECTOR, ".msg.assistant")
        rows = {r.find_elements(By.TAG_NAME, "td")[0].text: r.find_elements(By.TAG_NAME, "td")[1].text
                for r in answer.find_elements(By.CSS_SELECTOR, "table.timings tr")}
        shot = tmp_path / "web_demo.png"
        driver.save_screenshot(str(shot))
        print(f"\nweb demo screenshot: {shot}")
        text = driver.execute_script("return arguments[0].firstChild.textContent", answer)
        updates = driver.execute_script("return window.updates")
        playing = driver.execute_script("return document.getElementById('player').src")
        # A follow-up in the same conversation continues the cached session.
        driver.find_element(By.ID, "question").send_keys("And then?")
        driver.find_element(By.ID, "ask").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant table.timings")) == 2)
        second = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")[1].text
    finally:
        driver.quit()
    expected = server.client().chat.completions.create(
        model=server.model, max_tokens=64, temperature=0,
        messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video_id}},
                                               {"type": "text", "text": QUESTION}]}]).choices[0].message.content
    assert text == expected and updates > 3
    for name in ("prefill", "time to first token", "decode", "tokens"):
        assert rows.get(name), (name, rows)
    assert rows["decode"].endswith("tokens/s") and playing.startswith("blob:")
    assert "cached)" in second and "(0 cached)" not in second
