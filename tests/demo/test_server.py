"""The demo as a real server: gradio_client calls, ten concurrent clients, and a real browser.

The server is started on a free loopback port by the test and stopped by PID.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from demo.app import example_images

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARTIFACTS = os.path.join(REPO, "artifacts")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(demo_model_dir):
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    proc = subprocess.Popen([sys.executable, "-m", "demo", "--model", str(demo_model_dir), "--port", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail("demo server exited:\n" + proc.stdout.read()[-3000:])
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("demo server did not start within 180 s")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def test_named_endpoints(client):
    from gradio_client import handle_file

    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/ask", "/detect", "/describe", "/grounded_caption", "/proposals"} <= names
    reply, image = client.predict(handle_file(example_images()[0]), "boat", api_name="/detect")
    assert reply["text"] and os.path.isfile(image)
    summary, drawn = client.predict(handle_file(example_images()[0]), "fine", api_name="/proposals")
    assert "proposals" in summary["summary"] and os.path.isfile(drawn)
    reply, image = client.predict(None, "boat", api_name="/ask")
    assert "upload an image" in reply["text"]


def test_ten_concurrent_clients_get_correct_answers(client, demo_model_dir):
    from gradio_client import handle_file

    from chatrex import ChatRexPredictor
    from demo.logic import DemoLogic

    # The reference answers come from the same model in-process (greedy decoding is deterministic).
    local = DemoLogic(ChatRexPredictor.from_pretrained(demo_model_dir))
    jobs = [(example_images()[i % 3], q) for i, q in enumerate(["find the boat", "how many trees are there?", "what colour is the house?", "find the red car", "describe the image"] * 2)]
    expected = [local.ask(img, q).text for img, q in jobs]
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda job: client.predict(handle_file(job[0]), job[1], api_name="/ask")[0]["text"], jobs))
    assert results == expected


@pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("chromedriver") is None, reason="Debian chromium + chromium-driver are not installed (.ci/run installs them)")
def test_real_browser_upload_and_ask(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1100",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(server)
        wait = WebDriverWait(driver, 120)
        upload = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#input-image input[type=file]")))
        upload.send_keys(os.path.abspath(example_images()[0]))
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#input-image img")))
        box = driver.find_element(By.CSS_SELECTOR, "#message textarea")
        box.send_keys("Find the boat.")
        driver.find_element(By.CSS_SELECTOR, "#send").click()
        # The user's message and the model's answer appear in the chat ...
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chatbot .message")) >= 2)
        messages = [m.text for m in driver.find_elements(By.CSS_SELECTOR, "#chatbot .message")]
        assert "Find the boat." in messages[0]
        assert messages[-1].strip()
        # ... and so does the annotated image.
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#annotated-image img")))
        os.makedirs(ARTIFACTS, exist_ok=True)
        driver.save_screenshot(os.path.join(ARTIFACTS, "demo-browser.png"))
    finally:
        driver.quit()
