"""`feature-pipeline`: the pipeline without the UI (the seed's `python main.py`).

    feature-pipeline scan                 register every video as a partition, print keys
    feature-pipeline run                  embed every new or changed video through Dagster
    feature-pipeline models download      fetch the configured weights into models/
    feature-pipeline models make-random   a random-weight model for offline smoke runs
    feature-pipeline samples              generate small sample videos
    feature-pipeline quickstart           offline smoke run: random model + samples + run
    feature-pipeline db status|stop       the shared Milvus Lite server: show it, stop it

`--config` (or FEATURE_PIPELINE_CONFIG) picks the YAML file. Runs are recorded in the
Dagster instance at DAGSTER_HOME (default ./.dagster), so the UI shows them too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from feature_pipeline_dagster.cli.instance import dagster_instance, register_videos
from feature_pipeline_dagster.core.errors import PipelineError
from feature_pipeline_dagster.core.settings import CONFIG_ENV, ConfigError, config_path, load_settings


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.config:
        os.environ[CONFIG_ENV] = str(args.config)
    try:
        return args.handler(args) or 0
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feature-pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help=f"pipeline YAML (default: ${CONFIG_ENV} or config/clip-config.yaml)")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    scan = commands.add_parser("scan", help="register every video under video_input.path as a partition")
    scan.set_defaults(handler=_scan)
    run = commands.add_parser("run", help="embed every new or changed video through Dagster")
    run.add_argument("--all", action="store_true", help="embed every video again, changed or not")
    run.set_defaults(handler=_run)
    quickstart = commands.add_parser("quickstart", help="make-random model and samples if missing, then run")
    quickstart.set_defaults(handler=_quickstart, all=False)
    samples = commands.add_parser("samples", help="generate small sample videos into video_input.path")
    samples.add_argument("--count", type=int, default=3)
    samples.set_defaults(handler=_samples)
    db = commands.add_parser("db", help="the database: status, stop the local Milvus Lite server")
    db_actions = db.add_subparsers(required=True, metavar="ACTION")
    db_actions.add_parser("status", help="data dir, address, pid, collections and row counts").set_defaults(handler=_db_status)
    db_actions.add_parser("stop", help="stop the Milvus Lite server that serves db.uri").set_defaults(handler=_db_stop)
    models = commands.add_parser("models", help="download or build model weights").add_subparsers(required=True, metavar="ACTION")
    download = models.add_parser("download", help="fetch the configured weights into a local folder")
    download.add_argument("--dest", type=Path, help="target folder (default: models/<arch>-<tag>)")
    download.set_defaults(handler=_download)
    make_random = models.add_parser("make-random", help="random weights of the real architecture (meaningless vectors)")
    make_random.add_argument("--dest", type=Path, help="target folder (default: model.path of a folder config)")
    make_random.set_defaults(handler=_make_random)
    return parser


def _scan(args) -> int:
    settings = load_settings()
    videos = register_videos(settings, dagster_instance(settings))
    for key in videos:
        print(key)
    print(f"{len(videos)} video(s) under {settings.video_input.path}", file=sys.stderr)
    return 0


def _run(args) -> int:
    from tqdm import tqdm

    from feature_pipeline_dagster.cli.workers import plan_runs, run_on_devices, videos_to_embed
    from feature_pipeline_dagster.orchestration.partitions import videos_partitions
    from feature_pipeline_dagster.core.devices import run_devices
    from feature_pipeline_dagster.orchestration.definitions import build_definitions

    settings = load_settings()
    instance = dagster_instance(settings)
    started = time.perf_counter()
    videos = register_videos(settings, instance)
    todo = videos_to_embed(settings, instance, build_definitions(str(settings.source)), videos, args.all)
    devices = run_devices(settings.gpus)
    print(f"{len(videos)} video(s) under {settings.video_input.path}; {len(todo)} new or changed; "
          f"device(s): {', '.join(devices)}", file=sys.stderr)
    failures, partial, rows = {}, {}, 0
    with tqdm(total=len(todo), unit="video", file=sys.stderr, disable=not todo) as bar:
        runs = plan_runs(todo, instance.get_dynamic_partitions(videos_partitions.name), len(devices))
        for result in run_on_devices(runs, devices, settings.logs_dir):
            rows += result.rows
            bar.update()
            if not result.ok:
                failures[result.key] = result.error
                bar.write(f"FAILED {result.key}: {result.error}", file=sys.stderr)
            elif result.partial:
                partial[result.key] = result.partial
    print(f"embedded {len(todo) - len(failures)} of {len(todo)} video(s), {rows} rows into "
          f"{settings.db.uri} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    for key, message in partial.items():
        print(f"  partial: {key}: {message}", file=sys.stderr)
    for key, message in failures.items():
        print(f"  failed: {key}: {message}", file=sys.stderr)
    return 1 if failures else 0


def _db_status(args) -> int:
    from feature_pipeline_dagster.core.store import store_for

    settings = load_settings(check_paths=False)
    store = store_for(settings.db)
    try:
        if settings.db.is_lite:
            from feature_pipeline_dagster.core.store.lite_server import LiteServer

            state = LiteServer(settings.db.uri).ensure_running()
            print(f"data dir: {state.data_dir}\naddress:  {state.uri}\npid:      {state.pid}")
        else:
            print(f"server:   {settings.db.uri}")
        for spec in settings.db.collections:
            print(f"collection {spec.name}: {store.count_rows(spec)} rows")
    finally:
        store.close()
    return 0


def _db_stop(args) -> int:
    settings = load_settings(check_paths=False)
    if not settings.db.is_lite:
        print(f"db.uri is a Milvus server ({settings.db.uri}): nothing local to stop", file=sys.stderr)
        return 0
    from feature_pipeline_dagster.core.store.lite_server import LiteServer

    state = LiteServer(settings.db.uri).stop()
    print(f"stopped Milvus Lite server pid {state.pid} on {state.uri}" if state else "no Milvus Lite server running")
    return 0


def _quickstart(args) -> int:
    settings = load_settings(check_paths=False)
    if settings.model.source == "folder" and not Path(settings.model.path).exists():
        _make_random(argparse.Namespace(dest=None))
    if not any(settings.video_input.path.glob("*.mp4")):
        _samples(argparse.Namespace(count=3))
    return _run(args)


def _samples(args) -> int:
    from feature_pipeline_dagster.core.samples import write_samples

    folder = load_settings(check_paths=False).video_input.path
    for path in write_samples(folder, args.count):
        print(path)
    return 0


def _download(args) -> int:
    from feature_pipeline_dagster.core.models import FAMILIES, weights_module

    model = load_settings(check_paths=False).model
    names = dict.fromkeys([FAMILIES[model.name].label(model), model.path.removeprefix("hf-hub:")])
    dest = args.dest or Path("models") / "-".join(names).replace("/", "--")
    weights_module(model).download(model, dest)
    print(f"{dest}\nuse it with:  model: {{source: folder, path: {dest}}}")
    return 0


def _make_random(args) -> int:
    from feature_pipeline_dagster.core.models import weights_module

    model = load_settings(check_paths=False).model
    if args.dest is None and model.source != "folder":
        raise ConfigError(f"{config_path()}: model.source: make-random writes into model.path of a folder config; or pass --dest")
    from feature_pipeline_dagster.core.models.weights import RANDOM_NOTICE

    dest = args.dest or Path(model.path)
    weights_module(model).make_random(model, dest)
    print(f"{dest}\n{RANDOM_NOTICE}")
    return 0

