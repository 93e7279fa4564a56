"""The search page's application: its state, routes and server.

Starlette and uvicorn (installed with dagster-webserver), no build step: pages are HTML
built in render.py with every file name escaped, one small script served from there (the
Content-Security-Policy allows no other, and no inline script). What a request can reach:

- `/` and `/search` (GET with `q`, POST with an uploaded image): the core's search. The
  request gives a query, `k`, `by` (shot or gap) and `gap`, never a filter expression. A
  moment by shot is one card (its best frame) and its player starts at the shot's start.
- `/thumb`, `/watch`, `/video`, `/clip`: a video named by its path relative to `video_input.path`,
  served only if it resolves (symlinks followed) to a file with a video extension under
  that folder; `..`, absolute paths and links that leave it are refused with 404.
  `/video` answers HTTP range requests (Starlette's FileResponse), so the player seeks.
  `/clip` is the watch page's "Download this moment" (media.py).
- A codec browsers cannot play (anything but H.264, VP8/9, AV1 in MP4/MOV/WebM) gets the
  moment's frames and a note instead of the player; so does a video the player fails on.
"""

from __future__ import annotations

import sys
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route

from feature_pipeline_dagster.core.errors import PipelineError, VideoError
from feature_pipeline_dagster.core.models import FAMILIES, load_extractor
from feature_pipeline_dagster.core.models.weights import warned_elsewhere
from feature_pipeline_dagster.core.search import search
from feature_pipeline_dagster.core.search.api import query_device
from feature_pipeline_dagster.core.search.moments import BY, DEFAULT_GAP_S
from feature_pipeline_dagster.core.search.query import load_query_model
from feature_pipeline_dagster.core.store import store_for
from feature_pipeline_dagster.core.videos import folder_video
from feature_pipeline_dagster.page import media, render
from feature_pipeline_dagster.page.render import MAX_K, document, form, results, warning, watch_page

SHUTDOWN_S = 2  # uvicorn's graceful shutdown: a streaming video does not hold Ctrl-C longer
MAX_UPLOAD_BYTES = 20 * 1024 * 1024


def serve(settings, host: str, port: int) -> int:
    """Serve the page until Ctrl-C; the model is loaded before the port opens.

    Ctrl-C stops it within `SHUTDOWN_S` even while a video is streaming. Once the port listens,
    uvicorn's SIGINT/SIGTERM handler is in place (installed before its startup binds the port),
    and a signal is never lost to a thread: whichever thread the kernel hands it to, CPython
    runs the handler in the main thread the next time that thread takes the GIL (the event loop
    ticks every 0.1 s, and uvloop's wakeup fd wakes it at once); the handler only sets
    `should_exit`, which nothing can swallow. Before the port listens, Ctrl-C is Python's
    KeyboardInterrupt (`interrupted`, exit 130)."""
    import uvicorn

    app = create_app(settings)
    app.state.page.warm_up()  # before the port opens: no visitor waits for the model
    for line in app.state.page.banner:
        print(line, file=sys.stderr)
    print(f"search page on http://{host}:{port}/ (read-only; Ctrl-C stops it)", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
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
            self._store = store_for(self.settings.db, reads_may_lag=True)
        return self._store

    @property
    def has_text_tower(self) -> bool:
        return FAMILIES[self.settings.model.name].text_tower

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def warm_up(self) -> None:
        """Load the model (and its text tower) before the first query, saying how long it
        takes: its seconds are paid at start, not by a visitor."""
        warned_elsewhere(self.settings.model.path)  # the banner says it, once
        model, device = self.settings.model, query_device(self.settings)
        load_query_model(model, device, self.has_text_tower, _say)
        extractor = load_extractor(model, device)
        if "RANDOM WEIGHTS" in extractor.description:
            self.banner = [f"RANDOM WEIGHTS: {self.settings.model.path} gives meaningless vectors; results mean "
                           "nothing beyond identical pictures"]

    def search(self, **query):
        with self.lock:
            return search(self.settings, store=self.store, **query)

    def video(self, relpath: str) -> Path | None:
        """The file `relpath` names, if it is a video under the folder; else None."""
        try:
            return folder_video(self.settings.video_input, relpath)
        except VideoError:
            return None


def _say(line: str) -> None:
    """A progress line on stderr, at once."""
    print(line, file=sys.stderr, flush=True)


def create_app(settings):
    page = Page(settings)

    @asynccontextmanager
    async def lifespan(app):
        yield
        page.close()

    app = Starlette(routes=[
        Route("/", home), Route("/search", search_route, methods=["GET", "POST"]), Route("/thumb", media.thumb),
        Route("/watch", watch), Route("/video", media.video), Route("/clip", media.clip),
        Route("/page.js", render.script),
    ], lifespan=lifespan)
    app.state.page = page
    return app


# Routes ---------------------------------------------------------------------------------


async def home(request):
    return document(request, form(request.app.state.page, {}), "")


async def search_route(request):
    page = request.app.state.page
    image = None
    if request.method == "POST":
        sent = await request.form(max_files=1, max_fields=8)
        fields = {k: v for k, v in sent.items() if isinstance(v, str)}
        upload = sent.get("image")
        if upload is not None and not isinstance(upload, str) and upload.filename:
            image = await upload.read(MAX_UPLOAD_BYTES + 1)
            if len(image) > MAX_UPLOAD_BYTES:
                return document(request, form(page, fields) + warning(f"the image is over {MAX_UPLOAD_BYTES >> 20} MB"),
                                "", status=413)
        await sent.close()
    else:
        fields = dict(request.query_params)
    text = (fields.get("q") or "").strip() or None
    try:
        k = min(MAX_K, max(1, int(fields.get("k") or 10)))
        gap = float(fields.get("gap") or DEFAULT_GAP_S)
    except ValueError:
        return document(request, form(page, fields) + warning("k and gap are numbers"), "", status=400)
    if image is not None:
        text = None
    try:
        result = await run_in_threadpool(page.search, text=text, image=image, k=k, gap=gap,
                                         by=fields.get("by") or BY[0])
    except PipelineError as err:
        return document(request, form(page, fields) + warning(str(err)), "", status=400)
    return document(request, form(page, fields) + results(result, quoted=text is not None), f" - {result.query}")


async def watch(request):
    page = request.app.state.page
    relpath = request.query_params.get("v", "")
    path = page.video(relpath)
    if path is None:
        return document(request, warning("no such video under the video folder"), "", status=404)
    try:
        start = max(0.0, float(request.query_params.get("s", "0")))
        end = max(start, float(request.query_params.get("e", start)))
    except ValueError:
        return document(request, warning("s and e are seconds"), "", status=400)
    playable, codec = await run_in_threadpool(media.playable, path)
    frames = await run_in_threadpool(media.segment_frames, page, path, start, end)
    body = watch_page(relpath, path, start, end, frames, playable, codec, page.settings.video_input.sample_fps)
    return document(request, body, f" - {relpath}")


__all__ = ["create_app", "serve"]
