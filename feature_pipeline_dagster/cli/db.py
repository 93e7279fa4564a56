"""`feature-pipeline db status|stop`.

`db status` starts nothing: with no Lite server running it says so; with one (or a Milvus
server URI) it counts the rows of every collection the config owns, the summary among
them, and names those not created yet without creating them.

`--all` (no config needed) lists or stops every Lite server started from this working
folder, whatever config started it: after trying two configs, `db stop` with one left the
other's server (about 240 MB) running until its idle stop.
"""

from __future__ import annotations

import sys

from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.store.lite_server import LiteServer, REGISTRY, clients, registered
from feature_pipeline_dagster.core.store import open_store, store_token
from feature_pipeline_dagster.core.errors import StoreError, one_line


def add_arguments(parser, what: str) -> None:
    parser.add_argument("--all", action="store_true",
                        help=f"{what} every Milvus Lite server started from this working folder, any config's")


def db_status(args) -> int:
    from feature_pipeline_dagster.core.collections import owned_collections

    if getattr(args, "all", False):
        return _status_all()
    settings = load_settings(check_paths=False)
    db = settings.db
    if db.is_lite:
        server = LiteServer(db.uri, db.lite_idle_minutes)
        state = server.running()
        if state is None:
            print(f"Milvus Lite server: not running ({db.uri}); it starts on the next command that needs it")
            print(f"data dir: {server.data_dir}" + ("" if server.data_dir.exists() else " (not created yet)"))
            for spec in owned_collections(settings):
                print(f"collection {spec.name}: rows not counted while no server runs")
            return 0
        idle = f"; stops itself after {state.idle_minutes:g} idle minutes" if state.idle_minutes else ""
        print(f"Milvus Lite server: running ({db.uri}){idle}")
        print(f"data dir: {state.data_dir}\naddress:  {state.uri}\npid:      {state.pid}")
        store = open_store(state.uri)  # this server's address: a server that went meanwhile is not restarted
    else:
        print(f"server:   {db.uri}")
        store = open_store(db.uri, store_token(db.token_env))
    try:
        for spec in owned_collections(settings):
            if not _exists(store, spec.name):
                print(f"collection {spec.name}: not created yet")
            else:
                print(f"collection {spec.name}: {store.count_rows(spec)} rows")
    finally:
        store.close()
    return 0


def _exists(store, name: str) -> bool:
    """Whether the collection exists; unlike `count_rows`, never creates it."""
    try:
        return store.client.has_collection(name)
    except StoreError:
        raise
    except Exception as err:
        raise StoreError(f"Milvus at {store.uri}: has_collection failed ({one_line(err)})") from None


def _status_all() -> int:
    """One line per live Lite server this working folder started: data dir, address, pid,
    its idle stop and whether a client is connected now. Starts nothing, reads no config."""
    servers = registered()
    if not servers:
        print(f"no Milvus Lite server started from this folder is running ({REGISTRY})")
    for _, state in servers:
        idle = f"stops itself after {state.idle_minutes:g} idle minutes" if state.idle_minutes else "no idle stop"
        connected = clients(state.port)
        now = f"{connected} client(s) connected" if connected else "idle now"
        print(f"{state.data_dir}  {state.uri}  pid {state.pid}  {idle}; {now}")
    return 0


def db_stop(args) -> int:
    if getattr(args, "all", False):
        servers = registered()
        for server, _ in servers:
            state = server.stop()
            if state:
                print(f"stopped Milvus Lite server pid {state.pid} on {state.uri} ({state.data_dir})")
        if not servers:
            print("no Milvus Lite server started from this folder is running")
        return 0
    settings = load_settings(check_paths=False)
    if not settings.db.is_lite:
        print(f"db.uri is a Milvus server ({settings.db.uri}): nothing local to stop", file=sys.stderr)
        return 0

    state = LiteServer(settings.db.uri).stop()
    print(f"stopped Milvus Lite server pid {state.pid} on {state.uri}" if state else "no Milvus Lite server running")
    return 0
