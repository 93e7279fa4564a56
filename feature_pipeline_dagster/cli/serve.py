"""`feature-pipeline serve`: the search page, read-only, on 127.0.0.1 by default.

Starlette and uvicorn (installed with dagster-webserver), no build step: pages are HTML
built here with every file name escaped, one small script served from this module (the
Content-Security-Policy allows no other, and no inline script). What a request can reach:

- `/` and `/search` (GET with `q`, POST with an uploaded image): the core's search. The
  request gives a query, `k`, `by` (shot or gap) and `gap`, never a filter expression. A
  moment by shot is one card (its best frame) and its player starts at the shot's start.
- `/thumb`, `/watch`, `/video`, `/clip`: a video named by its path relative to `video_input.path`,
  served only if it resolves (symlinks followed) to a file with a video extension under
  that folder; `..`, absolute paths and links that leave it are refused with 404.
  `/video` answers HTTP range requests (Starlette's FileResponse), so the player seeks.
  `/clip` is the watch page's "Download this moment": the moment as an MP4 of its own
  (core/clips.py, as `feature-pipeline clip` makes it), at most `MAX_CLIP_S` long.
- A codec browsers cannot play (anything but H.264, VP8/9, AV1 in MP4/MOV/WebM) gets the
  moment's frames and a note instead of the player; so does a video the player fails on.

Ctrl-C stops it within `SHUTDOWN_S` even while a video is streaming. Once the port listens,
uvicorn's SIGINT/SIGTERM handler is in place (installed before its startup binds the port),
and a signal is never lost to a thread: whichever thread the kernel hands it to, CPython
runs the handler in the main thread the next time that thread takes the GIL (the event loop
ticks every 0.1 s, and uvloop's wakeup fd wakes it at once); the handler only sets
`should_exit`, which nothing can swallow. Before the port listens, Ctrl-C is Python's
KeyboardInterrupt (`interrupted`, exit 130).
"""

from __future__ import annotations

import functools
import html
import io
import sys
import threading
from pathlib import Path
from urllib.parse import urlencode

from feature_pipeline_dagster.core.search.moments import BY, DEFAULT_GAP_S

SHUTDOWN_S = 2  # uvicorn's graceful shutdown: a streaming video does not hold Ctrl-C longer
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_K = 100
THUMB_WIDTH = 320
MAX_CLIP_S = 600.0  # a download re-encodes at most 10 minutes: one request cannot hold the CPU for an hour
WATCH_FRAMES = 12  # frames shown under the player (and instead of it)
PLAYABLE_CODECS = {"h264", "vp8", "vp9", "av1"}
PLAYABLE_CONTAINERS = {".mp4", ".m4v", ".mov", ".webm"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self'; media-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")

SCRIPT = """
document.querySelectorAll('video[data-start]').forEach(function (video) {
  var start = parseFloat(video.dataset.start);
  video.addEventListener('loadedmetadata', function () { if (video.currentTime < start) video.currentTime = start; });
  video.addEventListener('error', function () {
    video.hidden = true;
    document.getElementById('fallback').hidden = false;
  });
});
"""

STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 1200px; }
form { margin-bottom: 1em; } input[type=text] { width: 28em; }
.warning { background: #fdd; border: 1px solid #c00; padding: .5em; margin: .5em 0; }
.note { background: #ffd; border: 1px solid #aa0; padding: .5em; margin: .5em 0; }
.moments { display: flex; flex-wrap: wrap; gap: 1em; list-style: none; padding: 0; }
.moment { width: 320px; } .moment img, .frames img { width: 100%; display: block; }
.name { font-weight: bold; overflow-wrap: anywhere; } .frames { display: flex; flex-wrap: wrap; gap: .5em; }
.frames figure { width: 240px; margin: 0; } video { max-width: 100%; }
"""


def add_arguments(parser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")


def run_serve(args) -> int:
    import uvicorn

    from feature_pipeline_dagster.cli.db import start_lite_server
    from feature_pipeline_dagster.core.settings import load_settings

    settings = load_settings()
    start_lite_server(settings)
    app = create_app(settings)
    app.state.page.warm_up()  # before the port opens: no visitor waits for the model
    for warning in app.state.page.banner:
        print(warning, file=sys.stderr)
    print(f"search page on http://{args.host}:{args.port}/ (read-only; Ctrl-C stops it)", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            timeout_graceful_shutdown=SHUTDOWN_S, lifespan="on")
    try:
        uvicorn.Server(config).run()  # re-raises the Ctrl-C it handled, once shut down
    except KeyboardInterrupt:
        pass
    print("search page stopped", file=sys.stderr)
    return 0


class Page:
    """What the routes share: the settings, one store, the query encoder (loaded once), a lock
    (one query at a time through the model and the store connection)."""

    def __init__(self, settings):
        self.settings = settings
        self.lock = threading.Lock()
        self._store = None
        self.banner: list[str] = []

    @property
    def store(self):
        if self._store is None:
            from feature_pipeline_dagster.core.store import store_for

            self._store = store_for(self.settings.db, reads_may_lag=True)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def warm_up(self) -> None:
        """Load the model (and its text tower) before the first query, saying how long it
        takes: its seconds are paid at start, not by a visitor."""
        from feature_pipeline_dagster.cli.search import say
        from feature_pipeline_dagster.core.models import load_extractor
        from feature_pipeline_dagster.core.models.weights import warned_elsewhere
        from feature_pipeline_dagster.core.search.api import _query_device
        from feature_pipeline_dagster.core.search.query import load_query_model

        warned_elsewhere(self.settings.model.path)  # the banner says it, once
        model, device = self.settings.model, _query_device(self.settings)
        load_query_model(model, device, _has_text_tower(self.settings), say)
        extractor = load_extractor(model, device)
        if "RANDOM WEIGHTS" in extractor.description:
            self.banner = [f"RANDOM WEIGHTS: {self.settings.model.path} gives meaningless vectors; results mean "
                           "nothing beyond identical pictures"]

    def search(self, **query):
        from feature_pipeline_dagster.core.search import search

        with self.lock:
            return search(self.settings, store=self.store, **query)

    def video(self, relpath: str) -> Path | None:
        """The file `relpath` names, if it is a video under the folder; else None."""
        from feature_pipeline_dagster.core.errors import VideoError
        from feature_pipeline_dagster.core.videos import folder_video

        try:
            return folder_video(self.settings.video_input, relpath)
        except VideoError:
            return None


def create_app(settings):
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.routing import Route

    page = Page(settings)

    @asynccontextmanager
    async def lifespan(app):
        yield
        page.close()

    app = Starlette(routes=[
        Route("/", home), Route("/search", search_route, methods=["GET", "POST"]), Route("/thumb", thumb),
        Route("/watch", watch), Route("/video", video), Route("/clip", clip), Route("/page.js", script),
    ], lifespan=lifespan)
    app.state.page = page
    return app


# Routes ---------------------------------------------------------------------------------


async def home(request):
    return _html(request, _form(request.app.state.page, {}), "")


async def search_route(request):
    from starlette.concurrency import run_in_threadpool

    from feature_pipeline_dagster.core.errors import PipelineError

    page = request.app.state.page
    image = None
    if request.method == "POST":
        form = await request.form(max_files=1, max_fields=8)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        upload = form.get("image")
        if upload is not None and not isinstance(upload, str) and upload.filename:
            image = await upload.read(MAX_UPLOAD_BYTES + 1)
            if len(image) > MAX_UPLOAD_BYTES:
                return _html(request, _form(page, fields) + _warning(f"the image is over {MAX_UPLOAD_BYTES >> 20} MB"),
                             "", status=413)
        await form.close()
    else:
        fields = dict(request.query_params)
    text = (fields.get("q") or "").strip() or None
    try:
        k = min(MAX_K, max(1, int(fields.get("k") or 10)))
        gap = float(fields.get("gap") or DEFAULT_GAP_S)
    except ValueError:
        return _html(request, _form(page, fields) + _warning("k and gap are numbers"), "", status=400)
    if image is not None:
        text = None
    try:
        result = await run_in_threadpool(page.search, text=text, image=image, k=k, gap=gap,
                                         by=fields.get("by") or BY[0])
    except PipelineError as err:
        return _html(request, _form(page, fields) + _warning(str(err)), "", status=400)
    return _html(request, _form(page, fields) + _results(result, quoted=text is not None), f" - {result.query}")


async def thumb(request):
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import Response

    page = request.app.state.page
    path = page.video(request.query_params.get("v", ""))
    try:
        frame = int(request.query_params.get("f", ""))
        grid = _grid(request.query_params.get("g", ""))
        cells = _cells(request.query_params.get("c", ""))
    except ValueError:
        return Response("bad request", status_code=400, media_type="text/plain")
    if path is None or frame < 0:
        return Response("not found", status_code=404, media_type="text/plain")
    stat = path.stat()
    try:
        data = await run_in_threadpool(_thumbnail, str(path), stat.st_mtime_ns, frame, grid, cells)
    except Exception:  # a frame that does not decode: the page shows its alt text
        return Response("cannot decode that frame", status_code=404, media_type="text/plain")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


async def watch(request):
    from starlette.concurrency import run_in_threadpool

    page = request.app.state.page
    relpath = request.query_params.get("v", "")
    path = page.video(relpath)
    if path is None:
        return _html(request, _warning("no such video under the video folder"), "", status=404)
    try:
        start = max(0.0, float(request.query_params.get("s", "0")))
        end = max(start, float(request.query_params.get("e", start)))
    except ValueError:
        return _html(request, _warning("s and e are seconds"), "", status=400)
    playable, codec = await run_in_threadpool(_playable, path)
    frames = await run_in_threadpool(_segment_frames, page, path, start, end)
    name = html.escape(relpath)
    figures = "".join(
        f'<figure><img src="/thumb?{urlencode({"v": relpath, "f": f})}" alt="frame at {t:.1f} s">'
        f"<figcaption>{t:.1f} s</figcaption></figure>" for f, t in frames)
    note = (f"This video's codec ({html.escape(codec)} in {html.escape(path.suffix or 'no extension')}) does not "
            "play in browsers: here are its frames of this moment.")
    if playable:
        player = (f'<video controls preload="metadata" data-start="{start:.3f}" '
                  f'src="/video?{html.escape(urlencode({"v": relpath}))}#t={start:.3f}"></video>'
                  f'<div id="fallback" class="note" hidden>The browser cannot play this video: here are its frames '
                  f"of this moment.</div>")
    else:
        player = f'<div id="fallback" class="note">{note}</div>'
    # A moment of one hit (end == start) is the one sampled frame's interval.
    cut = {"v": relpath, "s": f"{start:.3f}", "e": f"{max(end, start + 1 / page.settings.video_input.sample_fps):.3f}"}
    download = f'<p><a id="download" href="{html.escape("/clip?" + urlencode(cut))}" download>Download this moment</a></p>'
    body = (f'<p><a href="/">New search</a></p><h2 class="name">{name}</h2>'
            f"<p>moment {start:.1f} s - {end:.1f} s</p>{player}{download}<div class=\"frames\">{figures}</div>")
    return _html(request, body, f" - {relpath}")


async def video(request):
    from starlette.responses import FileResponse, Response

    path = request.app.state.page.video(request.query_params.get("v", ""))
    if path is None:
        return Response("not found", status_code=404, media_type="text/plain")
    return FileResponse(path, media_type=_media_type(path))


async def clip(request):
    """The moment `s`-`e` of `v` as an MP4 download (the same file `feature-pipeline clip` writes)."""
    import tempfile

    from starlette.background import BackgroundTask
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse, Response

    from feature_pipeline_dagster.core.clips import export_clip
    from feature_pipeline_dagster.core.errors import PipelineError

    path = request.app.state.page.video(request.query_params.get("v", ""))
    if path is None:
        return Response("not found", status_code=404, media_type="text/plain")
    try:
        start, end = (float(request.query_params.get(key, "")) for key in ("s", "e"))
    except ValueError:
        return Response("s and e are seconds", status_code=400, media_type="text/plain")
    if not end - start <= MAX_CLIP_S:  # NaN too
        return Response(f"a download is at most {MAX_CLIP_S:g} s long", status_code=400, media_type="text/plain")
    folder = tempfile.TemporaryDirectory(prefix="clip-")
    try:
        result = await run_in_threadpool(export_clip, path, start, end, Path(folder.name) / "moment.mp4")
    except PipelineError as err:
        folder.cleanup()
        return Response(str(err).replace(str(path), path.name), status_code=400, media_type="text/plain")
    except BaseException:
        folder.cleanup()
        raise
    return FileResponse(result.path, media_type="video/mp4", filename=_clip_name(path, result.start_s, result.end_s),
                        background=BackgroundTask(folder.cleanup))


def _clip_name(path: Path, start: float, end: float) -> str:
    """A download name no browser or header can misread: ASCII letters, digits, `._-`."""
    stem = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._-") else "_" for ch in path.stem)[:80]
    return f"{stem.strip('._') or 'video'}_{start:.1f}-{end:.1f}s.mp4"


async def script(request):
    from starlette.responses import Response

    return Response(SCRIPT, media_type="text/javascript")


# Pieces ---------------------------------------------------------------------------------


def _html(request, body: str, title: str, status: int = 200):
    from starlette.responses import HTMLResponse

    banner = "".join(_warning(w) for w in request.app.state.page.banner)
    document = (f'<!doctype html><html><head><meta charset="utf-8"><title>Search{html.escape(title)}</title>'
                f"<style>{STYLE}</style></head><body><h1>Find the moment</h1>{banner}{body}"
                '<script src="/page.js"></script></body></html>')
    return HTMLResponse(document, status_code=status,
                        headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                                 "Referrer-Policy": "no-referrer"})


def _warning(text: str) -> str:
    return f'<div class="warning">{html.escape(text)}</div>'


def _form(page, fields: dict) -> str:
    value = html.escape(fields.get("q", "") or "")
    k = html.escape(str(fields.get("k", 10)))
    chosen = fields.get("by") or BY[0]
    by = "".join(f'<option value="{v}"{" selected" if v == chosen else ""}>{v}</option>' for v in BY)
    family_has_text = _has_text_tower(page.settings)
    hint = "" if family_has_text else " (this model has no text tower: upload an image)"
    return (f'<form method="post" action="/search" enctype="multipart/form-data">'
            f'<input type="text" name="q" value="{value}" placeholder="a red car at night{html.escape(hint)}" '
            f'aria-label="query"> or image <input type="file" name="image" accept="image/*" aria-label="image"> '
            f'k <input type="number" name="k" value="{k}" min="1" max="{MAX_K}" style="width:4em"> '
            f'moments by <select name="by" aria-label="moments by">{by}</select> '
            f'<button type="submit">Search</button></form>')


def _has_text_tower(settings) -> bool:
    from feature_pipeline_dagster.core.models import FAMILIES

    return FAMILIES[settings.model.name].text_tower


def _results(result, quoted: bool = False) -> str:
    notes = "".join(_warning(w) for w in result.warnings if not w.startswith("RANDOM WEIGHTS"))
    if not result.moments:
        return notes + '<p id="results">No moments found.</p>'
    items = []
    for m in result.moments:
        best = m.best
        thumb = {"v": m.video_path, "f": best.frame_id}
        if best.patches is not None:
            thumb.update(g=f"{best.patches.grid[0]}x{best.patches.grid[1]}",
                         c=";".join(f"{r},{c}" for r, c in best.patches.best))
        watch_url = "/watch?" + urlencode({"v": m.video_path, "s": f"{m.start_s:.3f}", "e": f"{m.end_s:.3f}"})
        items.append(
            f'<li class="moment"><a class="open" href="{html.escape(watch_url)}">'
            f'<img src="{html.escape("/thumb?" + urlencode(thumb))}" alt="frame at {m.best_s:.1f} s"></a>'
            f'<div class="name">{html.escape(m.video_path)}</div>'
            f"<div>{'shot ' if m.shot is not None else ''}{m.start_s:.1f} s - {m.end_s:.1f} s, best at "
            f"{m.best_s:.1f} s, score {m.score:.4f}</div></li>")
    query = f"\u201c{result.query}\u201d" if quoted else result.query
    return (f'{notes}<p>{len(result.moments)} moment(s) for {html.escape(query)} in '
            f'{html.escape(result.collection)}</p><ul id="results" class="moments">{"".join(items)}</ul>')


def _grid(text: str) -> tuple[int, int] | None:
    if not text:
        return None
    rows, cols = (int(v) for v in text.split("x"))
    if not (0 < rows <= 512 and 0 < cols <= 512):
        raise ValueError(text)
    return rows, cols


def _cells(text: str) -> tuple[tuple[int, int], ...]:
    if not text:
        return ()
    cells = tuple(tuple(int(v) for v in cell.split(",")) for cell in text.split(";")[:32])
    if any(len(c) != 2 for c in cells):
        raise ValueError(text)
    return cells


@functools.lru_cache(maxsize=256)
def _thumbnail(path: str, mtime_ns: int, frame: int, grid, cells) -> bytes:
    """A JPEG of frame `frame` (the stored frame_id), the NaViT cells outlined."""
    import numpy as np
    from PIL import Image, ImageDraw

    from feature_pipeline_dagster.core.decode.reader import SamplingPlan, VideoReader

    reader = VideoReader(path)
    try:
        if frame >= reader.info.frame_count:
            raise ValueError("no such frame")
        batch = next(reader.batches(SamplingPlan(np.array([frame]), np.array([0])), 1))
    finally:
        reader.close()
    picture = Image.fromarray(batch.frames[0])
    picture.thumbnail((THUMB_WIDTH, THUMB_WIDTH * 4))
    if grid and cells:
        draw = ImageDraw.Draw(picture)
        cell_h, cell_w = picture.height / grid[0], picture.width / grid[1]
        for i, (r, c) in enumerate(cells):
            box = (c * cell_w, r * cell_h, (c + 1) * cell_w - 1, (r + 1) * cell_h - 1)
            draw.rectangle(box, outline=(255, 0, 0) if i == 0 else (255, 200, 0), width=2)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=85)
    return out.getvalue()


def _segment_frames(page, path: Path, start: float, end: float) -> list[tuple[int, float]]:
    """(frame_id, seconds) of the sampled frames from `start` to `end`: the frames the run
    embedded (the configured sampling and decoder plan them; a GPU decoder's plan is its CPU
    twin's, the page decodes on the CPU), at most WATCH_FRAMES evenly spread."""
    import numpy as np

    from feature_pipeline_dagster.core.decode.reader import VideoReader

    spec = page.settings.video_input.decode.on_cpu()
    try:
        reader = VideoReader(path, decoder=spec.decoder)
    except Exception:
        return []
    try:
        plan = reader.plan(spec)
    finally:
        reader.close()
    seconds = plan.timestamps_ms / 1000
    inside = np.flatnonzero((seconds >= start - 1e-3) & (seconds <= end + 1e-3))
    if len(inside) > WATCH_FRAMES:
        inside = inside[np.round(np.linspace(0, len(inside) - 1, WATCH_FRAMES)).astype(int)]
    return [(int(plan.frame_ids[i]), float(seconds[i])) for i in inside]


def _playable(path: Path) -> tuple[bool, str]:
    """Whether browsers play it (codec and container), and its codec's name."""
    import av

    try:
        with av.open(str(path)) as container:
            codec = container.streams.video[0].codec_context.name
    except Exception:
        return False, "unknown"
    return codec in PLAYABLE_CODECS and path.suffix.lower() in PLAYABLE_CONTAINERS, codec


def _media_type(path: Path) -> str:
    return {".webm": "video/webm", ".mov": "video/quicktime"}.get(path.suffix.lower(), "video/mp4")


__all__ = ["create_app"]
