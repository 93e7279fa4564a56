"""What the search page serves from the video folder: a frame as a thumbnail, the video
itself with HTTP range requests (Starlette's FileResponse, so the player seeks), the moment
as an MP4 download (core/clips.py, the file `feature-pipeline clip` writes, at most
`MAX_CLIP_S` long), and the frames the run embedded for the watch page. Every path comes
through `Page.video`: only videos under `video_input.path` are read."""

from __future__ import annotations

import functools
import io
from pathlib import Path

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, Response

from feature_pipeline_dagster.core.clips import export_clip
from feature_pipeline_dagster.core.decode.reader import SamplingPlan, VideoReader
from feature_pipeline_dagster.core.errors import PipelineError

THUMB_WIDTH = 320
MAX_CLIP_S = 600.0  # a download re-encodes at most 10 minutes: one request cannot hold the CPU for an hour
WATCH_FRAMES = 12  # frames shown under the player (and instead of it)
PLAYABLE_CODECS = {"h264", "vp8", "vp9", "av1"}
PLAYABLE_CONTAINERS = {".mp4", ".m4v", ".mov", ".webm"}


async def thumb(request):
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


async def video(request):
    path = request.app.state.page.video(request.query_params.get("v", ""))
    if path is None:
        return Response("not found", status_code=404, media_type="text/plain")
    return FileResponse(path, media_type=_media_type(path))


async def clip(request):
    """The moment `s`-`e` of `v` as an MP4 download (the same file `feature-pipeline clip` writes)."""
    import tempfile

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


def segment_frames(page, path: Path, start: float, end: float) -> list[tuple[int, float]]:
    """(frame_id, seconds) of the sampled frames from `start` to `end`: the frames the run
    embedded (the configured sampling and decoder plan them; a GPU decoder's plan is its CPU
    twin's, the page decodes on the CPU), at most WATCH_FRAMES evenly spread."""
    import numpy as np

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


def playable(path: Path) -> tuple[bool, str]:
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
