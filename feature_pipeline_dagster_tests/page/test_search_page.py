"""`feature-pipeline search` and `feature-pipeline serve` as a user runs them: subprocesses
over generated videos embedded by the real engine into Milvus Lite, the tiny random CLIP;
the page over HTTP (range requests, refusals, escaping) and in headless Chromium.

The browser part needs Debian's Chromium at /usr/bin/chromium and the `playwright`
package (its own browser download is never used); skipped without them.
"""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest

from feature_pipeline_dagster.core.engine.run import RunReport, embed_videos
from feature_pipeline_dagster.core.models import load_extractor
from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.store import store_for
from feature_pipeline_dagster_tests.conftest import clip_config, write_config
from feature_pipeline_dagster_tests.core.test_clip_export import frame_at, streams, video_packets
from feature_pipeline_dagster_tests.end_to_end.test_ui import (CHROMIUM, CHROMIUM_ARGS, free_port, start, stop, tail,
                                                               wait_http)
from feature_pipeline_dagster_tests.store_rows import stored_rows

XSS = "<img src=x onerror=alert(1)>.mp4"
VIDEOS = {"alpha.mp4": 0, XSS: 1, "sub/beta.mp4": 2}


def write_mpeg4_avi(path: Path, seconds: float = 2.0) -> Path:
    """A video browsers cannot play (MPEG-4 Part 2 in AVI) that the decoder reads."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(int(seconds * 10)):
            frame = np.full((120, 160, 3), (i * 12) % 255, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_clip):
    """Videos embedded into Milvus Lite, and `feature-pipeline serve` on a free port."""
    from feature_pipeline_dagster.core.store.lite_server import LiteServer

    root = tmp_path_factory.mktemp("page")
    videos = root / "videos"
    for name, seed in VIDEOS.items():
        write_video(videos / name, seconds=3.0, seed=seed)
    write_mpeg4_avi(videos / "old codec.avi")
    outside = write_video(root / "outside" / "secret.mp4", seconds=1.0)
    (videos / "link.mp4").symlink_to(outside)
    config = write_config(root, clip_config(root, tiny_clip, videos))
    settings = load_settings(config)
    store = store_for(settings.db)
    try:
        report = embed_videos(settings, settings.db.collections[0], store, load_extractor(settings.model, "cpu"),
                              [*VIDEOS, "old codec.avi"], RunReport())
    finally:
        store.close()
    assert not report.failed, report.failed
    env = {**os.environ, "FEATURE_PIPELINE_CONFIG": str(config), "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    port = free_port()
    log = root / "serve.log"
    server = start([sys.executable, "-m", "feature_pipeline_dagster.cli", "serve", "--port", str(port)], env, root, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/", server, log)
        yield type("Site", (), {"base": base, "root": root, "env": env, "settings": settings, "log": log,
                                "server": server})
    finally:
        stop(server)
        LiteServer(settings.db.uri).stop()


def get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def cli(site, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "feature_pipeline_dagster.cli", "search", *args], cwd=site.root,
                          env=site.env, capture_output=True, text=True, timeout=300)


# 1. The command ------------------------------------------------------------------------


def test_search_command_text_json_and_image(site, tmp_path, capsys, monkeypatch):
    """One subprocess, as a user types it; the image query and the refusal through the same
    `main` in this process (its model is loaded already: seconds saved in CI)."""
    from PIL import Image

    from feature_pipeline_dagster.cli import main
    from feature_pipeline_dagster_tests.core.test_search import decoded_frame

    result = cli(site, "a red car at night", "-k", "3", "--gap", "0", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout)
    assert answer["random_weights"] and len(answer["moments"]) == 3
    assert "RANDOM WEIGHTS" in result.stderr
    assert set(answer["moments"][0]) >= {"video_path", "start_s", "end_s", "best_s", "score", "hits"}
    frame, _, timestamp_ms = decoded_frame(site.root / "videos" / "sub/beta.mp4", index=1)
    Image.fromarray(frame).save(tmp_path / "query.png")
    monkeypatch.chdir(site.root)
    config = site.env["FEATURE_PIPELINE_CONFIG"]
    capsys.readouterr()
    assert main(["search", "--image", str(tmp_path / "query.png"), "-k", "1", "--video", "sub/*",
                 "--config", config]) == 0
    out = capsys.readouterr().out
    assert out.startswith(" 1. 1.0000  sub/beta.mp4  ") and f"best 0:0{timestamp_ms / 1000:.1f}" in out
    assert main(["search", "--config", config]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        'error: give a text query ("a red car") or --image FILE, not both or neither')


# 4. The page over HTTP ------------------------------------------------------------------


def test_video_is_served_with_range_requests(site):
    whole = (site.root / "videos" / "alpha.mp4").read_bytes()
    status, headers, body = get(f"{site.base}/video?v=alpha.mp4", {"Range": "bytes=100-299"})
    assert status == 206 and body == whole[100:300]
    assert headers["content-range"] == f"bytes 100-299/{len(whole)}" and headers["accept-ranges"] == "bytes"
    status, _, body = get(f"{site.base}/video?v=alpha.mp4")
    assert status == 200 and body == whole


@pytest.mark.parametrize("name", ["../outside/secret.mp4", "sub/../../outside/secret.mp4", "link.mp4",
                                  "/etc/passwd", "sub/../alpha.mp4", "", "config.yaml", "../config.yaml"])
def test_paths_outside_the_video_folder_are_refused(site, name):
    for route in ("video", "thumb", "watch", "clip"):
        status, _, body = get(f"{site.base}/{route}?{urlencode({'v': name, 'f': 0, 's': 0, 'e': 1})}")
        assert status == 404, (route, name)
        assert b"secret" not in body


def test_file_names_are_escaped_and_filters_never_come_from_the_request(site):
    status, headers, body = get(f"{site.base}/search?" + urlencode({"q": "a car", "k": "10", "gap": "0"}))
    page = body.decode()
    assert status == 200 and "script-src 'self'" in headers["content-security-policy"]
    assert XSS not in page and "&lt;img src=x onerror=alert(1)&gt;.mp4" in page
    status, _, body = get(f"{site.base}/watch?" + urlencode({"v": XSS, "s": "1", "e": "2"}))
    assert status == 200 and XSS not in body.decode() and "&lt;img src=x" in body.decode()
    # Parameters that look like filters are ignored, not pasted into Milvus' expression.
    status, _, body = get(f"{site.base}/search?" + urlencode({"q": "a car", "filter": 'video_path != ""',
                                                              "video": '" or 1==1 or "'}))
    assert status == 200


def download_link(site, video: str, start: float, end: float) -> str:
    """The watch page's "Download this moment" link, as the page gives it."""
    import re

    status, _, body = get(f"{site.base}/watch?" + urlencode({"v": video, "s": start, "e": end}))
    assert status == 200
    return html.unescape(re.search(r'<a id="download" href="([^"]+)" download>Download this moment</a>',
                                   body.decode()).group(1))


def test_the_watch_page_downloads_the_moment_as_an_mp4(site, tmp_path):
    """Through the page's own link: an attachment with a safe name, an MP4 PyAV plays; the
    video's first key frame (0 s) is a stream copy of the source's packets."""
    link = download_link(site, "alpha.mp4", 1.0, 2.0)
    assert link == "/clip?v=alpha.mp4&s=1.000&e=2.000"
    status, headers, body = get(site.base + link)
    assert status == 200 and headers["content-type"] == "video/mp4"
    assert headers["content-disposition"] == 'attachment; filename="alpha_1.0-2.0s.mp4"'
    (tmp_path / "moment.mp4").write_bytes(body)
    assert streams(tmp_path / "moment.mp4")["h264"] == pytest.approx(1.0, abs=1 / 30)  # re-encoded: no key frame at 1 s
    source = site.root / "videos" / "alpha.mp4"
    assert np.abs(frame_at(tmp_path / "moment.mp4", 0).astype(int) - frame_at(source, 1.0)).mean() < 4
    status, _, body = get(site.base + download_link(site, "sub/beta.mp4", 0, 1.5))
    (tmp_path / "start.mp4").write_bytes(body)
    assert status == 200 and video_packets(tmp_path / "start.mp4") == video_packets(source.parent / "sub/beta.mp4",
                                                                                     end_s=1.5)
    # One hit (end == start) is its sampled frame's second; odd names become a safe file name.
    link = download_link(site, XSS, 2.0, 2.0)
    assert link == "/clip?" + urlencode({"v": XSS, "s": "2.000", "e": "3.000"})
    status, headers, body = get(site.base + link)
    assert status == 200 and headers["content-disposition"] == 'attachment; filename="img_src_x_onerror_alert_1_2.0-3.0s.mp4"'


@pytest.mark.parametrize("query, answer", [
    ({"s": "x", "e": "1"}, "s and e are seconds"), ({"s": "1", "e": "nan"}, "a download is at most 600 s long"),
    ({"s": "0", "e": "3600"}, "a download is at most 600 s long"),
    ({"s": "2", "e": "1"}, "the end (1 s) must come after the start (2 s)"),
])
def test_a_download_of_a_moment_that_is_not_there_is_refused(site, query, answer):
    status, _, body = get(f"{site.base}/clip?" + urlencode({"v": "alpha.mp4", **query}))
    assert (status, body.decode()) == (400, answer)


def test_unplayable_codec_falls_back_to_frames_with_a_note(site):
    status, _, body = get(f"{site.base}/watch?" + urlencode({"v": "old codec.avi", "s": "0", "e": "1"}))
    page = body.decode()
    assert status == 200 and "<video" not in page and "codec (mpeg4 in .avi) does not play in browsers" in page
    assert page.count("<img src=\"/thumb?") == 2
    status, headers, body = get(f"{site.base}/thumb?" + urlencode({"v": "old codec.avi", "f": 0}))
    assert status == 200 and headers["content-type"] == "image/jpeg" and body[:2] == b"\xff\xd8"


def test_navit_cells_are_outlined_on_the_thumbnail(site):
    import io

    from PIL import Image

    plain = get(f"{site.base}/thumb?" + urlencode({"v": "alpha.mp4", "f": 0}))[2]
    status, _, outlined = get(f"{site.base}/thumb?" + urlencode({"v": "alpha.mp4", "f": 0, "g": "2x2", "c": "1,1"}))
    assert status == 200 and outlined != plain
    picture = np.asarray(Image.open(io.BytesIO(outlined)).convert("RGB")).astype(int)
    h, w = picture.shape[:2]
    red = picture[h // 2 + 1, w // 2 + w // 8]  # on the top edge of cell (1, 1)
    assert red[0] > 180 and red[1] < 90 and red[2] < 90, red
    assert get(f"{site.base}/thumb?" + urlencode({"v": "alpha.mp4", "f": 0, "g": "x", "c": "1"}))[0] == 400


# 4. The page in a browser ----------------------------------------------------------------


def test_browser_types_a_query_sees_moments_and_opens_one(site):
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    dialogs = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            try:
                page.goto(f"{site.base}/")
                page.get_by_text("RANDOM WEIGHTS").first.wait_for()
                page.get_by_label("query").fill("a red car at night")
                page.get_by_role("button", name="Search").click()
                page.locator("#results .moment").first.wait_for()
                assert page.locator("#results .moment").count() >= 3
                assert page.get_by_text(XSS, exact=True).count() == 1  # the name, as text
                page.locator("#results img").first.evaluate("img => img.decode()")  # a decoded thumbnail
                page.locator("#results a.open").first.click()
                page.wait_for_url("**/watch?**")
                video = page.locator("video")
                video.wait_for(state="attached")
                start = float(video.get_attribute("data-start"))
                page.wait_for_function(
                    "() => { const v = document.querySelector('video'); return v.readyState >= 1 || v.hidden; }")
                state = page.evaluate("() => { const v = document.querySelector('video');"
                                      "return {hidden: v.hidden, time: v.currentTime}; }")
                if state["hidden"]:  # this Chromium lacks the codec: the fallback shows the frames
                    assert page.locator("#fallback").is_visible()
                else:
                    assert state["time"] == pytest.approx(start, abs=0.5)
                assert page.locator(".frames img").count() >= 1
                with page.expect_download() as download:
                    page.get_by_text("Download this moment").click()
                saved = site.root / download.value.suggested_filename
                download.value.save_as(saved)
                assert saved.suffix == ".mp4" and streams(saved)["h264"] > 0
                if not state["hidden"]:  # a later start: the player seeks there (range requests)
                    page.goto(f"{site.base}/watch?" + urlencode({"v": "alpha.mp4", "s": "1.5", "e": "2"}))
                    page.wait_for_function("() => document.querySelector('video').readyState >= 1")
                    seconds = page.evaluate("() => document.querySelector('video').currentTime")
                    assert seconds == pytest.approx(1.5, abs=0.5)
            except Exception as err:
                page.screenshot(path=str(site.root / "search-page.png"), full_page=True)
                raise AssertionError(f"{err}\nscreenshot: {site.root / 'search-page.png'}\n"
                                     f"server log:\n{tail(site.log)}") from err
        finally:
            browser.close()
    assert not dialogs, dialogs


def test_ctrl_c_stops_the_server_while_a_video_streams(site):
    """Last in this module: it stops the module's server. A player holding /video open does
    not keep Ctrl-C from ending it (uvicorn's graceful shutdown is bounded)."""
    import signal
    import socket

    port = int(site.base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as player:
        player.sendall(b"GET /video?v=alpha.mp4 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-\r\n\r\n")
        assert player.recv(64).startswith(b"HTTP/1.1 206")
        os.kill(site.server.pid, signal.SIGINT)
        assert site.server.wait(timeout=120) == 0, tail(site.log)
    assert tail(site.log).endswith("search page stopped\n")


@pytest.mark.parametrize("sampling", ["keyframes", "nearest"])
def test_the_watch_page_shows_the_frames_the_run_embedded(project, sampling):
    """The page plans a moment's frames as the run sampled them: with `keyframes` (or
    `nearest`) it showed the 1 fps grid, frames that were never embedded."""
    import yaml

    from feature_pipeline_dagster.page.app import Page
    from feature_pipeline_dagster.page.media import segment_frames

    config = yaml.safe_load(project.config.read_text())
    config["video_input"].update(sampling=sampling, max_shift_ms=200)
    project.config.write_text(yaml.safe_dump(config))
    write_video(project.videos / "gop.mp4", seconds=6.0, seed=3, gop=45)  # a key frame every 1.5 s
    settings = load_settings(project.config)
    spec, store = settings.db.collections[0], store_for(settings.db)
    try:
        report = embed_videos(settings, spec, store, load_extractor(settings.model, "cpu"), ["gop.mp4"], RunReport())
        assert not report.failed, report.failed
        rows = stored_rows(store, spec, "gop.mp4", ("frame_id", "timestamp_ms"))
    finally:
        store.close()
    embedded = sorted((r["frame_id"], r["timestamp_ms"] / 1000) for r in rows)
    shown = segment_frames(Page(settings), project.videos / "gop.mp4", 0.0, 6.0)
    assert [f for f, _ in shown] == [f for f, _ in embedded]
    assert [round(t, 3) for _, t in shown] == [round(t, 3) for _, t in embedded]
