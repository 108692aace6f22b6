"""`alexnet serve`: the JSON API through FastAPI's TestClient, then the installed command as a
real server: raw HTTP, a headless Chromium driving the page, and Ctrl-C.

The run is the retrieval tests' tiny one (3 classes x 6 generated JPEGs, an untrained
checkpoint, an autoencoder trained for a few updates), made once for the module.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image
from retrieval_fixtures import indexed_run

from alexnet import collection
from alexnet.cli.main import cli
from alexnet.cli.web import create_app, listen
from alexnet.pipeline.layout import RunPaths

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PASSWD = b"root:"  # what /etc/passwd starts with: must never come back


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return indexed_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def ri(run):
    return collection(run).open()


@pytest.fixture(scope="module")
def client(run, ri) -> TestClient:
    return TestClient(create_app(run, train=ri))


@pytest.fixture(scope="module")
def files(ri) -> list[str]:
    """The indexed images: files[i] has index id i."""
    return [ri.file(i) for i in range(len(ri))]


def upload(client, path, name=None, **form):
    """POST api/search with the file at `path` as the upload."""
    data = Path(path).read_bytes() if isinstance(path, (str, Path)) else path
    image = {"image": (name or Path(str(path)).name, data, "image/jpeg")}
    return client.post("/api/search", files=image, data={k: str(v) for k, v in form.items()})


# --- the API -------------------------------------------------------------------------------


def test_info_states_the_run(client, run):
    info = client.get("/api/info").json()
    assert info["run"] == str(run) and info["classes"] == ["blue", "green", "red"]
    assert info["count"] == 12 and info["bits"] == 64 and info["index"] == "flat"
    assert info["epoch"] == 1 and info["top1_error"] is None and info["galleries"] == []
    assert info["max_upload_mb"] == 20


def test_info_gives_the_checkpoint_epochs_top1_error_from_the_metrics(run, ri):
    paths = RunPaths(run)
    lines = [{"epoch": 1, "top1_error": 0.5}, {"epoch": 2, "top1_error": 0.25}]
    paths.metrics.write_text("".join(json.dumps(m) + "\n" for m in lines))
    try:
        assert TestClient(create_app(run, train=ri)).get("/api/info").json()["top1_error"] == 0.5
    finally:
        paths.metrics.unlink()


def test_an_upload_gets_the_librarys_records_and_finds_itself(client, ri, files, run):
    reply = upload(client, files[4], k=5, rerank=12)
    assert reply.status_code == 200, reply.text
    out = reply.json()
    name = Path(files[4]).name
    library = ri.search([Path(files[4]).read_bytes()], k=5, rerank=12, names=[name])
    assert out.pop("query_ms") > 0 and library.pop("query_ms") > 0  # timings differ
    assert out == json.loads(json.dumps({"run": str(run), **library}))
    first = out["queries"][0]["results"][0]
    assert first["id"] == 4 and first["hamming"] == 0 and first["distance"] < 1e-2
    assert first["path"] == files[4] and first["class"] == Path(files[4]).parent.name

    hamming = upload(client, files[4], k=3).json()
    assert hamming["distance"] == "hamming" and hamming["rerank"] == 0
    assert [r["rank"] for r in hamming["queries"][0]["results"]] == [1, 2, 3]
    assert hamming["queries"][0]["results"][0]["hamming"] == 0


def test_a_search_by_id_reads_that_indexed_image(client, files):
    out = client.post("/api/search", data={"id": "7", "k": "2", "rerank": "12"}).json()
    assert out["queries"][0]["query"] == files[7]
    assert out["queries"][0]["results"][0]["id"] == 7


def test_thumbnails_are_made_once_and_kept_under_the_run(client, run, ri):
    reply = client.get("/api/thumb/3")
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(reply.content)) as im:
        assert im.format == "JPEG" and im.size == (160, 160)
    kept = RunPaths(run).thumb(ri.trained.manifest.fingerprint, 3)
    assert kept.read_bytes() == reply.content
    before = kept.stat().st_mtime_ns
    assert client.get("/api/thumb/3").content == reply.content
    assert kept.stat().st_mtime_ns == before


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"this is not a JPEG\n", "not an image"),
        ("truncated", "corrupt or truncated"),
        ("gif", "unsupported format GIF"),
    ],
)
def test_a_bad_upload_is_400_saying_why_and_the_server_keeps_serving(
    client, files, content, reason
):
    if content == "truncated":
        content = Path(files[0]).read_bytes()[:400]
    elif content == "gif":
        buf = io.BytesIO()
        Image.new("RGB", (40, 40), "red").save(buf, format="GIF")
        content = buf.getvalue()
    reply = upload(client, content, name="bad.jpg")
    assert reply.status_code == 400
    assert reply.json()["error"].startswith(f"bad.jpg cannot be used: {reason}")
    assert upload(client, files[0], k=1).status_code == 200


def test_uploads_over_the_limit_are_413_with_or_without_a_length(run, ri, files):
    small = TestClient(create_app(run, train=ri, max_upload_mb=0.01))  # 10 KiB
    big = Path(files[0]).read_bytes() * 4
    assert len(big) > 0.01 * 2**20
    reply = upload(small, big, name="big.jpg")
    assert reply.status_code == 413 and "larger than 0.01 MB" in reply.json()["error"]

    def chunks():  # no Content-Length: the limit counts the bytes as they come
        yield b"--x\r\nContent-Disposition: form-data; name=image; filename=a.jpg\r\n\r\n"
        for _ in range(20):
            yield big[:1024]

    headers = {"content-type": "multipart/form-data; boundary=x"}
    reply = small.post("/api/search", content=chunks(), headers=headers)
    assert reply.status_code == 413
    assert upload(small, files[1], k=1).status_code == 200  # a small one still passes


@pytest.mark.parametrize(
    "form, status, message",
    [
        ({"k": "0"}, 400, "k must be from 1 to 12"),
        ({"k": "13"}, 400, "k must be from 1 to 12"),
        ({"k": "ten"}, 422, "k:"),
        ({"rerank": "-1"}, 400, "re-rank shortlist must be 0 (off) or more"),
        ({"gallery": "holiday"}, 400, "no gallery 'holiday' (galleries: none)"),
        ({"gallery": "../index"}, 400, "no gallery"),
    ],
)
def test_bad_parameters_are_refused_with_a_reason(client, files, form, status, message):
    reply = upload(client, files[0], **form)
    assert reply.status_code == status and message in reply.json()["error"]


def test_a_search_needs_exactly_one_of_image_and_id(client, files):
    both = {"image": ("a.jpg", Path(files[0]).read_bytes(), "image/jpeg")}
    for reply in (
        client.post("/api/search", files=both, data={"id": "1"}),
        client.post("/api/search", data={"k": "3"}),
    ):
        assert reply.status_code == 400 and "either an image or the id" in reply.json()["error"]


THUMB_ATTEMPTS = [
    "/api/thumb/%2e%2e",
    "/api/thumb/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/api/thumb/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/thumb/-1",
    "/api/thumb/12",
    "/api/thumb/99999999999999999999999",
    "/api/thumb/1.5",
    "/api/thumb/abc",
    "/api/thumb/",
    "/api/thumb/1?gallery=..%2F..%2Fetc",
    "/app.js/..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/..%2F..%2Fetc%2Fpasswd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/api/info/..%2f..%2fetc%2fpasswd",
]
ID_ATTEMPTS = ["../../etc/passwd", "%2e%2e", "/etc/passwd", "-1", "12", "1e3", "0x1", ""]


@pytest.mark.parametrize("path", THUMB_ATTEMPTS)
def test_no_route_reads_a_path_from_the_request(client, path):
    reply = client.get(path)
    assert 400 <= reply.status_code < 500 and PASSWD not in reply.content
    assert "error" in reply.json()


@pytest.mark.parametrize("value", ID_ATTEMPTS)
def test_a_search_id_is_an_index_id_and_nothing_else(client, value):
    reply = client.post("/api/search", data={"id": value})
    assert 400 <= reply.status_code < 500 and PASSWD not in reply.content


def test_an_uploads_file_name_is_only_a_label(client):
    reply = upload(client, b"hello", name="../../../../etc/passwd")
    assert reply.status_code == 400 and PASSWD not in reply.content


def test_concurrent_searches_each_get_their_own_answer(client, files):
    def results(i):
        reply = upload(client, files[i], k=3, rerank=12)
        assert reply.status_code == 200
        return reply.json()["queries"]

    expected = {i: results(i) for i in range(6)}
    order = list(range(6)) * 2
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(results, order))
    assert answers == [expected[i] for i in order]


def test_the_page_and_the_api_documentation(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="app.js"' in page.text and 'href="style.css"' in page.text
    assert client.get("/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/style.css").headers["content-type"].startswith("text/css")
    schema = client.get("/openapi.json").json()
    assert {"/api/info", "/api/search", "/api/thumb/{id}"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


def test_the_listening_socket_says_tcp_so_that_answers_are_not_held_back():
    # asyncio switches Nagle's algorithm off only for sockets whose proto is IPPROTO_TCP;
    # with it on, every answer waited ~40 ms for the client's delayed ACK.
    with listen("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP


def test_serve_refuses_a_taken_port_before_loading_anything(run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--run", str(run), "--port", str(port)])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output


# --- the installed command, as a real server ------------------------------------------------


class Server:
    """`alexnet serve` in a subprocess on a free port; its output collected as it comes."""

    def __init__(self, run: Path):
        script = Path(sys.executable).with_name("alexnet")
        self.proc = subprocess.Popen(  # --run relative, as a user types it
            [str(script), "serve", "--run", run.name, "--port", "0"],
            cwd=run.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        started = threading.Event()
        self.url = ""

        def read():
            for line in self.proc.stdout:
                self.output.append(line)
                if m := re.search(r"at (http://127\.0\.0\.1:\d+/)", line):
                    self.url = m.group(1)
                    started.set()
            started.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        if not started.wait(120) or not self.url:
            self.stop()
            pytest.fail(f"alexnet serve did not start:\n{''.join(self.output)}")
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))

    def wait(self) -> int:
        """The exit code, once the process has ended and all its output is read."""
        code = self.proc.wait(30)
        self.reader.join(10)
        return code

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        return self.wait()


@pytest.fixture(scope="module")
def server(run):
    s = Server(run)
    yield s
    s.stop()


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written: no client-side clean-up of dots or escapes."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    conn.endheaders()
    reply = conn.getresponse()
    return reply.status, reply.read()


def test_the_real_server_answers_and_refuses_raw_traversal(server):
    status, body = raw_get(server.port, "/api/info")
    assert status == 200 and json.loads(body)["count"] == 12
    for path in ["/api/thumb/../../etc/passwd", "/../../../../etc/passwd", *THUMB_ATTEMPTS]:
        status, body = raw_get(server.port, path)
        assert 400 <= status < 500 and PASSWD not in body, path


def chromium():
    """A headless Chromium driven by Debian's chromedriver (Selenium Manager cannot download
    here); skips when either is not installed."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install them)")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1100,800")
    return webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)


@pytest.mark.browser
def test_the_page_in_a_real_browser(server, files, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium()
    try:
        wait = WebDriverWait(driver, 90)
        driver.get(server.url)
        wait.until(lambda d: "12 images indexed" in d.find_element(By.ID, "facts").text)

        def searches() -> str | None:  # how many searches the page has shown
            return driver.find_element(By.TAG_NAME, "body").get_attribute("data-searches")

        rerank = driver.find_element(By.ID, "rerank")
        rerank.clear()
        rerank.send_keys("12")  # fc7 order: the query itself first, even among Hamming ties

        driver.find_element(By.ID, "file").send_keys(files[5])
        wait.until(lambda d: searches() == "1")
        cards = driver.find_elements(By.CSS_SELECTOR, "#results li")
        assert len(cards) == 12
        first = cards[0]
        assert first.get_attribute("data-id") == "5" and first.get_attribute("data-hamming") == "0"
        assert "#1" in first.text and Path(files[5]).parent.name in first.text
        assert "Hamming 0" in first.text and "fc7 0.00" in first.text
        thumb = (
            "const i = document.querySelector('#results img'); return i.complete && i.naturalWidth;"
        )
        assert wait.until(lambda d: d.execute_script(thumb)) == 160

        clicked = cards[3].get_attribute("data-id")
        cards[3].find_element(By.TAG_NAME, "button").click()
        wait.until(lambda d: searches() == "2")  # one new search: leaving "re-rank" ran none
        first = driver.find_element(By.CSS_SELECTOR, "#results li")
        assert first.get_attribute("data-id") == clicked
        assert (
            driver.find_element(By.ID, "preview")
            .get_attribute("src")
            .endswith(f"/api/thumb/{clicked}")
        )
        assert "error" not in driver.find_element(By.ID, "status").get_attribute("class")

        shot = tmp_path / "page.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 1000
        driver.set_window_size(400, 800)  # a phone: one column, nothing wider than the window
        assert driver.execute_script(
            "const e = document.documentElement; return e.scrollWidth <= e.clientWidth;"
        )
        driver.save_screenshot(str(tmp_path / "narrow.png"))
        if os.environ.get("SERVE_SCREENSHOT"):  # the README's picture: docs/serve.png
            driver.set_window_size(1000, 900)
            save_small_png(driver.get_screenshot_as_png(), Path(os.environ["SERVE_SCREENSHOT"]))
    finally:
        driver.quit()


def save_small_png(png: bytes, path: Path) -> None:
    with Image.open(io.BytesIO(png)) as im:
        im.convert("RGB").quantize(colors=128).save(path, optimize=True)


def test_ctrl_c_stops_the_server_cleanly(server):
    server.proc.send_signal(signal.SIGINT)
    code = server.wait()
    output = "".join(server.output)
    assert code == 130 and "Traceback" not in output and "stopped" in output
