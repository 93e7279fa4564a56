"""The search page's HTML: built here as strings, no template engine and no build step.
Every file name and query is escaped; the one script is served from `/page.js` (the
Content-Security-Policy allows no other, and no inline script)."""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import urlencode

from feature_pipeline_dagster.core.search.moments import BY

MAX_K = 100  # the form's bound on moments; the search route holds a request to it too
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


async def script(request):
    from starlette.responses import Response

    return Response(SCRIPT, media_type="text/javascript")


def document(request, body: str, title: str, status: int = 200):
    """A whole page: the banner (random weights), `body`, the script; with the headers that
    keep anything but this page's own script and media from running or loading."""
    from starlette.responses import HTMLResponse

    banner = "".join(warning(w) for w in request.app.state.page.banner)
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>Search{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>Find the moment</h1>{banner}{body}"
            '<script src="/page.js"></script></body></html>')
    return HTMLResponse(page, status_code=status,
                        headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                                 "Referrer-Policy": "no-referrer"})


def warning(text: str) -> str:
    return f'<div class="warning">{html.escape(text)}</div>'


def form(page, fields: dict) -> str:
    value = html.escape(fields.get("q", "") or "")
    k = html.escape(str(fields.get("k", 10)))
    chosen = fields.get("by") or BY[0]
    by = "".join(f'<option value="{v}"{" selected" if v == chosen else ""}>{v}</option>' for v in BY)
    hint = "" if page.has_text_tower else " (this model has no text tower: upload an image)"
    return (f'<form method="post" action="/search" enctype="multipart/form-data">'
            f'<input type="text" name="q" value="{value}" placeholder="a red car at night{html.escape(hint)}" '
            f'aria-label="query"> or image <input type="file" name="image" accept="image/*" aria-label="image"> '
            f'k <input type="number" name="k" value="{k}" min="1" max="{MAX_K}" style="width:4em"> '
            f'moments by <select name="by" aria-label="moments by">{by}</select> '
            f'<button type="submit">Search</button></form>')


def results(result, quoted: bool = False) -> str:
    notes = "".join(warning(w) for w in result.warnings if not w.startswith("RANDOM WEIGHTS"))
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


def watch_page(relpath: str, path: Path, start: float, end: float, frames: list[tuple[int, float]],
               playable: bool, codec: str, sample_fps: float) -> str:
    """The moment `start`-`end` of `relpath`: the player there (or, for a codec browsers
    cannot play, a note), the download link, and the frames the run embedded."""
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
    cut = {"v": relpath, "s": f"{start:.3f}", "e": f"{max(end, start + 1 / sample_fps):.3f}"}
    download = f'<p><a id="download" href="{html.escape("/clip?" + urlencode(cut))}" download>Download this moment</a></p>'
    return (f'<p><a href="/">New search</a></p><h2 class="name">{name}</h2>'
            f"<p>moment {start:.1f} s - {end:.1f} s</p>{player}{download}<div class=\"frames\">{figures}</div>")
