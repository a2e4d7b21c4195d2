"""The demo as a real server: gradio_client calls, ten concurrent clients, a conversation over
the API, a real browser, and the server stopping with the process that started it.

The server runs the bundled chatrex-tiny (what `make demo` serves, and quick: its answers are
short) on a free loopback port; it is started by the test and stopped by PID. Its output goes
to a file, which the tests read for tracebacks.
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

# A real server (tens of seconds to start), clients and a browser: `make test-fast` leaves these out.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARTIFACTS = os.path.join(REPO, "artifacts")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SERVER_ENV = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, log_path: str):
        self.url, self.log_path = url, log_path

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    log_path = tmp_path_factory.mktemp("demo-server") / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "demo", "--model", "chatrex-tiny", "--port", str(port)], cwd=REPO, env=SERVER_ENV,
                                stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}/", str(log_path))
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail("demo server exited:\n" + server.log()[-3000:])
        try:
            urllib.request.urlopen(server.url, timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("demo server did not start within 180 s")
    yield server
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server.url, verbose=False)


@pytest.fixture(scope="module")
def local():
    """The same model in-process: greedy decoding is deterministic, so it gives the expected answers."""
    from chatrex import ChatRexPredictor
    from demo.logic import DemoLogic

    return DemoLogic(ChatRexPredictor.from_pretrained("chatrex-tiny"))


def _is_png(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == PNG_SIGNATURE


def test_named_endpoints(client, tmp_path):
    from gradio_client import handle_file

    from demo.logic import NOT_AN_IMAGE

    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/ask", "/detect", "/describe", "/grounded_caption", "/proposals"} <= names
    reply, image = client.predict(handle_file(example_images()[0]), "boat", api_name="/detect")
    assert reply["text"] and _is_png(image)
    summary, drawn = client.predict(handle_file(example_images()[0]), "fine", api_name="/proposals")
    assert "proposals" in summary["summary"] and _is_png(drawn)
    reply, image = client.predict(None, "boat", api_name="/ask")
    assert "upload an image" in reply["text"]
    bad = tmp_path / "notes.txt"
    bad.write_text("not pixels")
    reply, image = client.predict(handle_file(str(bad)), "boat", api_name="/ask")
    assert reply["text"] == NOT_AN_IMAGE and image is None


def test_conversation_over_the_api(client, local):
    """The second question only makes sense after the first answer; the server must put the
    history in the prompt (history_turns counts the turns the model saw)."""
    from gradio_client import handle_file

    image = example_images()[0]
    first, annotated = client.predict(handle_file(image), "Find the boat.", api_name="/ask")
    assert first["raw"].startswith("<ground>") and first["history_turns"] == 0 and _is_png(annotated)
    history = [[first["prompt"], first["raw"]]]
    assert history == [["Find the boat.", first["raw"]]]
    second, _ = client.predict(handle_file(image), "What colour is it?", history, api_name="/ask")
    assert second["history_turns"] == 1
    assert second["text"] == local.ask(image, "What colour is it?", history).text
    bad, _ = client.predict(handle_file(image), "What colour is it?", [["Find the boat."]], api_name="/ask")
    assert "history[0]" in bad["text"]


def test_ten_concurrent_clients_get_correct_answers(client, local):
    from gradio_client import handle_file

    jobs = [(example_images()[i % 3], q) for i, q in enumerate(["find the boat", "how many trees are there?", "what colour is the house?", "find the red car", "describe the image"] * 2)]
    expected = [local.ask(img, q).text for img, q in jobs]
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda job: client.predict(handle_file(job[0]), job[1], api_name="/ask")[0]["text"], jobs))
    assert results == expected


def _chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1100",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


@pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("chromedriver") is None, reason="Debian chromium + chromium-driver are not installed (.ci/run installs them)")
def test_real_browser_conversation_and_bad_uploads(server, local, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from demo.logic import EMPTY_FILE, NOT_AN_IMAGE

    image = os.path.abspath(example_images()[0])
    first = local.ask(image, "Find the boat.")
    second = local.ask(image, "What colour is it?", [list(first.turn)])
    driver = _chrome()
    try:
        driver.get(server.url)
        wait = WebDriverWait(driver, 120)

        def upload(path):
            wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#input-image input[type=file]"))).send_keys(path)

        def ask(question):
            box = driver.find_element(By.CSS_SELECTOR, "#message textarea")
            box.send_keys(question)
            driver.find_element(By.CSS_SELECTOR, "#send").click()

        def bubbles(role):
            return driver.find_elements(By.CSS_SELECTOR, f"#chatbot [data-testid={role}] .message-content")

        def answered(texts):
            # Send is disabled while an answer streams in (a partial answer may already read as the final one).
            return lambda d: [b.text for b in bubbles("bot")] == texts and d.find_element(By.CSS_SELECTOR, "#send").is_enabled()

        upload(image)
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#current-image img")))
        ask("Find the boat.")
        wait.until(answered([first.text]))
        ask("What colour is it?")
        wait.until(answered([first.text, second.text]))
        assert [b.text for b in bubbles("user")] == ["Find the boat.", "What colour is it?"]
        # The grounded phrase is highlighted in its box colour, and printed once.
        phrase = next(text for text, label in first.spans if label)
        highlight = bubbles("bot")[0].find_element(By.CSS_SELECTOR, "span.grounded")
        assert highlight.text == phrase and bubbles("bot")[0].text.count(phrase) == 1
        assert highlight.value_of_css_property("background-color") == "rgba(230, 159, 0, 1)"  # palette colour 0, as its boxes
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#annotated-image img")))
        os.makedirs(ARTIFACTS, exist_ok=True)
        driver.save_screenshot(os.path.join(ARTIFACTS, "demo-browser.png"))

        text_file, empty_png = tmp_path / "notes.txt", tmp_path / "empty.png"
        text_file.write_text("not pixels")
        empty_png.write_bytes(b"")
        for path, expected in ((text_file, NOT_AN_IMAGE), (empty_png, EMPTY_FILE)):
            upload(str(path))
            wait.until(lambda d, expected=expected: d.find_element(By.CSS_SELECTOR, "#notice").text.strip() == expected)
        # The image and the conversation about it are still there.
        assert len(bubbles("bot")) == 2 and driver.find_elements(By.CSS_SELECTOR, "#current-image img")
    finally:
        driver.quit()
    log = server.log()
    assert "Running on local URL" in log and "Traceback" not in log


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its new parent to reap it has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_server_stops_when_its_parent_dies():
    """What `make demo` run in the background and killed by its PID does: make execs the
    server with CHATREX_EXIT_WITH_PARENT=1, so the server's parent is make."""
    launcher = ("import os, subprocess, sys; "
                "child = subprocess.Popen([sys.executable, '-m', 'demo', '--port', sys.argv[1]], env={**os.environ, 'CHATREX_EXIT_WITH_PARENT': '1'}); "
                "print(child.pid, flush=True); child.wait()")
    parent = subprocess.Popen([sys.executable, "-c", launcher, str(_free_port())], cwd=REPO, env=SERVER_ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    server_pid = int(parent.stdout.readline())
    try:
        assert '"url"' in parent.stdout.readline()  # the model is loaded: main() is past its set-up
        parent.kill()
        parent.wait()
        deadline = time.time() + 15
        while _alive(server_pid) and time.time() < deadline:
            time.sleep(0.2)
        assert not _alive(server_pid)
    finally:
        if _alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)
