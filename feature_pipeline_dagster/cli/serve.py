"""`feature-pipeline serve`: the search page (feature_pipeline_dagster/page), read-only, on
127.0.0.1 by default."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")


def run_serve(args) -> int:
    from feature_pipeline_dagster.core.settings import load_settings
    from feature_pipeline_dagster.core.store.lite_server import start_lite_server
    from feature_pipeline_dagster.page.app import serve

    settings = load_settings()
    start_lite_server(settings.db)
    return serve(settings, args.host, args.port)
