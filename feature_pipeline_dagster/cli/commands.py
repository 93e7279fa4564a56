"""`feature-pipeline`: the pipeline without the UI (the seed's `python main.py`).

    feature-pipeline scan                 register every video as a partition, print keys
    feature-pipeline run                  embed every new or changed video through Dagster
    feature-pipeline models download      fetch the configured weights into models/
    feature-pipeline models make-random   a random-weight model for offline smoke runs
    feature-pipeline samples              generate small sample videos
    feature-pipeline quickstart           offline smoke run: random model + samples + run
    feature-pipeline db status|stop       the shared Milvus Lite server: show it, stop it (--all: every one)
    feature-pipeline search "text"        find moments by text (CLIP) or --image FILE
    feature-pipeline duplicates [--json]  groups of near-duplicate videos, with matching time ranges
    feature-pipeline serve                the search page on http://127.0.0.1:8000
    feature-pipeline clip VIDEO --start S --end S -o FILE   a moment as an MP4 of its own

`--config` (or FEATURE_PIPELINE_CONFIG) picks the YAML file. Runs are recorded in the
Dagster instance at DAGSTER_HOME (default ./.dagster), so the UI shows them too.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from feature_pipeline_dagster.cli.db import add_arguments as add_db_arguments, db_status, db_stop
from feature_pipeline_dagster.cli.instance import dagster_instance, instance_home, register_videos
from feature_pipeline_dagster.core.errors import PipelineError
from feature_pipeline_dagster.core.settings import CONFIG_ENV, ConfigError, config_path, load_settings
from feature_pipeline_dagster.core.devices import run_devices
from feature_pipeline_dagster.core.models import FAMILIES, preload, weights_module
from feature_pipeline_dagster.core.models.tensors import check_devices
from feature_pipeline_dagster.core.run_sizing import WARM_RUN_FRAMES, expected_frames, pack_runs
from feature_pipeline_dagster.core.videos import list_videos, partition_key, relpath_of
from feature_pipeline_dagster.core.store import store_for
from feature_pipeline_dagster.core.models.weights import RANDOM_NOTICE
from feature_pipeline_dagster.orchestration.names import PLANNED_EVENTS_ENV


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


def console() -> None:
    """The `feature-pipeline` executable: `main`, then out without the interpreter's
    teardown. Unloading torch's, Dagster's and gRPC's modules took 1.3-1.7 s after the last
    line was printed (a one-clip `run` here: rows committed at 5.6 s, the process gone at
    7.3-7.5 s); by then the command has closed what it owns (decoder and worker processes
    joined, the store closed, Dagster's SQLite writes committed; the Lite server is meant to
    outlive it), so only the log files and stdio are left to flush."""
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # a reader that left (`| head`), or closed
            pass
    os._exit(code)


def _parser() -> argparse.ArgumentParser:
    config_help = f"pipeline YAML (default: ${CONFIG_ENV} or config/clip-config.yaml)"
    # --config before or after the command: each subcommand takes it too (SUPPRESS keeps
    # a value given before the command when none follows it).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, metavar="PATH", default=argparse.SUPPRESS, help=config_help)
    parser = argparse.ArgumentParser(prog="feature-pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, metavar="PATH", help=config_help)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(group, name: str, handler, help: str, **defaults) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=help, description=help, parents=[common])
        sub.set_defaults(handler=handler, **defaults)
        return sub

    command(commands, "scan", _scan, "register every video under video_input.path as a partition")
    run = command(commands, "run", _run, "embed every new or changed video through Dagster")
    run.add_argument("--all", action="store_true", help="embed every video again, changed or not")
    run.add_argument("--retry-failed", action="store_true",
                     help="try again the videos that failed for their content and have not changed since")
    command(commands, "quickstart", _quickstart, "make-random model and samples if missing, then run", all=False,
            retry_failed=False)
    samples = command(commands, "samples", _samples, "generate small sample videos into video_input.path")
    samples.add_argument("--count", type=int, default=3)
    db = commands.add_parser("db", help="the database: status, stop the local Milvus Lite server", parents=[common])
    db_actions = db.add_subparsers(required=True, metavar="ACTION")
    add_db_arguments(command(db_actions, "status", db_status, "the Milvus Lite server (starts nothing), "
                             "collections and row counts"), "list")
    add_db_arguments(command(db_actions, "stop", db_stop, "stop the Milvus Lite server that serves db.uri"), "stop")
    from feature_pipeline_dagster.cli import clip as clip_cli, duplicates as duplicates_cli, search as search_cli, serve as serve_cli

    search = command(commands, "search", search_cli.run_search, "find moments in the embedded videos by text or image")
    search_cli.add_arguments(search)
    duplicates = command(commands, "duplicates", duplicates_cli.run_duplicates,
                         "groups of near-duplicate videos (copies, re-encodes, trims) with matching time ranges")
    duplicates_cli.add_arguments(duplicates)
    serve = command(commands, "serve", serve_cli.run_serve, "serve the search page (read-only) on this machine")
    serve_cli.add_arguments(serve)
    clip = command(commands, "clip", clip_cli.run_clip, "a moment of a video as an MP4 of its own "
                   "(stream copy from a key frame, else re-encoded)")
    clip_cli.add_arguments(clip)
    models = commands.add_parser("models", help="download or build model weights", parents=[common])
    models = models.add_subparsers(required=True, metavar="ACTION")
    download = command(models, "download", _download, "fetch the configured weights into a local folder")
    download.add_argument("--dest", type=Path, help="target folder (default: models/<arch>-<tag>)")
    make_random = command(models, "make-random", _make_random, "random weights of the real architecture "
                          "(meaningless vectors)")
    make_random.add_argument("--dest", type=Path, help="target folder (default: model.path of a folder config)")
    return parser


def _scan(args) -> int:
    settings = load_settings()
    videos, _ = register_videos(settings, dagster_instance(settings))
    for key in videos:
        print(key)
    print(f"{len(videos)} video(s) under {settings.video_input.path}", file=sys.stderr)
    return 0


def _run(args) -> int:
    from tqdm import tqdm

    from feature_pipeline_dagster.cli.search import printable
    from feature_pipeline_dagster.core.engine.outcomes import Embedded, Interrupted
    from feature_pipeline_dagster.orchestration.local_runs import DeviceRuns, runners_per_device
    from feature_pipeline_dagster.core.search.watch import pictures, report_lines

    settings = load_settings()
    devices = run_devices(settings.gpus)
    check_devices(devices, settings.source)  # once, before any video, the database or Dagster is touched
    runners = sum(map(runners_per_device, devices))
    pictures(settings)  # the saved searches' pictures, likewise
    # One "materialization planned" event per asset and run instead of one per partition, which
    # Dagster reads from this variable: on its default SQLite storage each event cost 10-45 ms
    # here, two per video (the embedding and the summary), as much as a short clip's decoding;
    # 150 clips took 47-52 s with it against 66-71 s without. What is lost: the UI does not
    # mark the partitions of a failed run as failed (run prints them; `videos_complete` and
    # `<collection>_failed` name them). Set it to 0 to keep Dagster's default. The template's
    # event log (orchestration/event_log.py) plans this way in every process, the daemon's too;
    # this covers other storages (Postgres).
    os.environ.setdefault(PLANNED_EVENTS_ENV, "1")
    started = time.perf_counter()
    handlers = {s: signal.signal(s, _stop_starting) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        todo, skipped, chunks = _start(settings, devices, args, runners)
    except BaseException:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        raise
    runs = DeviceRuns(chunks, devices, settings.logs_dir)
    done, failures, partial, rows = set(), {}, {}, 0  # failures: message -> videos
    matches: dict[str, list] = {}  # saved search -> (video, its best frame)
    signals = []

    def interrupted_line() -> str:
        rest = "run again to continue" if len(done) < len(todo) else "nothing left to do"  # all finished in flight
        return f"interrupted: {len(done)} of {len(todo)} videos done; {rest}"

    def on_signal(signum, frame) -> None:
        """The first Ctrl-C (or SIGTERM) stops handing out work and lets the engine commit
        what it can; the second stops at once (crash-safe: the next run replaces the rest)."""
        signals.append(signum)
        if len(signals) == 1:
            runs.stop()
            print("\nstopping: the videos in progress are committed and recorded in Dagster first; Ctrl-C again "
                  "to stop at once (the next run redoes what was not committed)", file=sys.stderr, flush=True)
        else:
            runs.kill()
            print(f"\n{interrupted_line()}", file=sys.stderr, flush=True)  # after the progress bar's line
            os._exit(130)

    for signum in handlers:
        signal.signal(signum, on_signal)
    try:
        with tqdm(total=len(todo), unit="video", file=sys.stderr, disable=not todo) as bar:
            for result in runs:
                if isinstance(result, Interrupted):
                    continue
                bar.update()
                if isinstance(result, Embedded):
                    done.add(result.key)
                    rows += result.rows
                    if result.partial:
                        partial[result.key] = result.partial
                    for name, best in result.saved_searches.items():
                        matches.setdefault(name, []).append((printable(relpath_of(result.key)), best))
                else:  # a fault of the whole run comes once per video: said in full once
                    first = next(iter(failures.setdefault(result.error, [])), None)
                    failures[result.error].append(result.key)
                    bar.write(f"FAILED {result.key}: " + (f"as {first}" if first else result.error), file=sys.stderr)
    finally:
        if not signals:  # once stopping, a Ctrl-C as the run winds down still stops at once, with the same line
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
    if signals:
        print(interrupted_line(), file=sys.stderr)
        return 130
    print(f"embedded {len(done)} of {len(todo)} video(s), {rows} rows into "
          f"{settings.db.uri} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    if skipped:
        print(f"{len(skipped)} video{'' if len(skipped) == 1 else 's'} skipped: failed before, unchanged; "
              "--retry-failed to try again", file=sys.stderr)
    if done:
        for line in report_lines(matches, settings.watch):
            print(line, file=sys.stderr)
    for key, message in partial.items():
        print(f"  partial: {key}: {message}", file=sys.stderr)
    for message, keys in failures.items():
        print(f"  failed: {', '.join(keys)}: {message}", file=sys.stderr)
    return 1 if failures else 0


def _start(settings, devices: list[str], args, runners: int) -> tuple[list[str], list[str], list[list[str]]]:
    """`run`'s start: the keys to embed, those skipped as failed before, and their runs."""
    from feature_pipeline_dagster.core.engine.run import decode_first

    instance_home(settings)  # another folder's instance is refused before anything starts
    here = len(devices) == 1  # runs in this process: the model loads while the database and Dagster start
    if here:
        preload(settings.model, devices[0])
        decode_first(settings)  # and the decoders start beside them
    videos = {partition_key(v.relpath): v for v in list_videos(settings.video_input)}
    database = _prepare_database(settings, videos, args, decode_ahead=here)
    instance = dagster_instance(settings)
    _, order = register_videos(settings, instance, videos)
    todo, skipped = database.result()
    print(f"{len(videos)} video(s) under {settings.video_input.path}; {len(todo)} new or changed; "
          f"device(s): {', '.join(devices)}", file=sys.stderr)
    sampling = settings.video_input
    work = {key: expected_frames(videos[key].path, sampling.sample_fps, sampling.max_frames) for key in todo}
    return todo, skipped, pack_runs(todo, order, work, runners, least=WARM_RUN_FRAMES)


def _stop_starting(signum, frame) -> None:
    """Ctrl-C (or SIGTERM) while `run` starts, before any video: out at once. As a
    KeyboardInterrupt it could land inside an import while the model's and the database's
    threads import too, and leave Python's import lock held: the command hung (1 in 4 at 0.8 s
    here). Nothing is lost: no video has started, and SQLite rolls back what was half-written."""
    print("\ninterrupted", file=sys.stderr, flush=True)
    os._exit(130)


def _failed_before(settings, videos: dict, todo: list[str]) -> list[str]:
    """Keys of `todo` that failed for their content as they are now, with this code
    version (core/ledger.py): not tried again until they change."""
    from feature_pipeline_dagster.core.ledger import failed_before

    if not todo:
        return []
    store = store_for(settings.db)
    try:
        return sorted(partition_key(path) for path in failed_before(store, settings, [videos[k] for k in todo]))
    finally:
        store.close()


def _prepare_database(settings, videos: dict, args, decode_ahead: bool):
    """In the background while Dagster's instance opens: the Lite server started (said on
    stderr, once; runs and workers find it running), the videos to embed read from the
    ledger (core/ledger.py) and, on this process' device, the first of them decoded ahead
    (core/engine/run.py: decode_first) while the instance and the model take the GIL, then
    every collection a run writes created (0.5 s each on a fresh Milvus Lite file). Its
    result: the keys to embed, and those skipped as failed before."""
    import importlib
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from feature_pipeline_dagster.core.engine.run import decode_first
    from feature_pipeline_dagster.core.ledger import ledger_collection
    from feature_pipeline_dagster.core.shots import segments_collection
    from feature_pipeline_dagster.core.store.lite_server import start_lite_server
    from feature_pipeline_dagster.core.summary import summary_collection
    from feature_pipeline_dagster.orchestration.local_runs import videos_to_embed

    def prepare() -> tuple[list[str], list[str]]:
        if not videos:
            return [], []
        client = threading.Thread(target=importlib.import_module, args=("pymilvus",), daemon=True)
        client.start()  # its imports (0.5 s of CPU) while the server starts, rather than after
        start_lite_server(settings.db)
        client.join()
        todo = videos_to_embed(settings, videos, args.all)
        skipped = [] if args.all or args.retry_failed else _failed_before(settings, videos, todo)
        todo = [key for key in todo if key not in skipped]
        if decode_ahead and todo:  # in the folder's order, that of new partitions (pack_runs' for a fresh folder)
            wanted = set(todo)
            decode_first(settings, [video.relpath for key, video in videos.items() if key in wanted])
        features = [settings.collection_for(f) for f in settings.model.features]
        store = store_for(settings.db)
        try:  # the failed videos' collection is made by the first failure
            for spec in [*features, *map(ledger_collection, features), summary_collection(settings),
                         segments_collection(settings)]:
                store.ensure_collection(spec)
        finally:
            store.close()
        return todo, skipped

    pool = ThreadPoolExecutor(1, thread_name_prefix="database")
    try:
        return pool.submit(prepare)
    finally:
        pool.shutdown(wait=False)


def _quickstart(args) -> int:
    settings = load_settings(check_paths=False)
    if settings.model.source == "folder" and not Path(settings.model.path).exists():
        _make_random(argparse.Namespace(dest=None))
    if not any(settings.video_input.path.glob("*.mp4")):
        _samples(argparse.Namespace(count=3))
    code = _run(args)
    if code == 0:  # the next commands over what it embedded: a new shell otherwise reads the default config
        import shlex
        import shutil

        # As the user can type it: `.venv/bin/feature-pipeline` until the venv is on PATH.
        me = "feature-pipeline" if shutil.which("feature-pipeline") else shlex.quote(os.path.relpath(sys.argv[0]))
        print(f"search what it embedded (this shell's commands need the config):\n"
              f"  export {CONFIG_ENV}={shlex.quote(str(config_path()))}\n"
              f"  {me} search \"a red circle\"\n"
              f"  {me} serve", file=sys.stderr)
    return code


def _samples(args) -> int:
    from feature_pipeline_dagster.core.samples import write_samples

    folder = load_settings(check_paths=False).video_input.path
    for path in write_samples(folder, args.count):
        print(path)
    return 0


def _download(args) -> int:
    model = load_settings(check_paths=False).model
    names = dict.fromkeys([FAMILIES[model.name].label(model), model.path.removeprefix("hf-hub:")])
    dest = args.dest or Path("models") / "-".join(names).replace("/", "--")
    weights_module(model).download(model, dest)
    print(f"{dest}\nuse it with:  model: {{source: folder, path: {dest}}}")
    return 0


def _make_random(args) -> int:
    model = load_settings(check_paths=False).model
    if args.dest is None and model.source != "folder":
        raise ConfigError(f"{config_path()}: model.source: make-random writes into model.path of a folder config; or pass --dest")

    dest = args.dest or Path(model.path)
    weights_module(model).make_random(model, dest)
    print(f"{dest}\n{RANDOM_NOTICE}")
    return 0

