"""The search page (`feature-pipeline serve`): a read-only web application over the core's
search, on 127.0.0.1 by default.

- `app.py`: the application, its shared state (`Page`), the search and watch routes, and
  `serve` (uvicorn, with Ctrl-C honoured while a video streams).
- `render.py`: the HTML it renders, every file name escaped, under a Content-Security-Policy
  that allows no inline script.
- `media.py`: what it serves from the video folder: thumbnails, the video itself with range
  requests, the moment as an MP4 download, the frames the run embedded.

The core and the orchestration layer never import it, and it never imports the CLI
(import-linter, setup.cfg).
"""
