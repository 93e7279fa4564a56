"""What the insert request built from numpy bytes saves: client CPU per 1000 rows of
1152-d (NaViT's width) through `insert_columns` (core/store/fast_insert.py) against
pymilvus' public `client.insert`, into a real Milvus Lite server. Not a test (it was
`test_client_cpu_per_1000_rows`, which asserted nothing).

    python bench/bench_fast_insert.py [--rows 1000] [--repeats 3]

The public path's time includes building its row dicts from the arrays, as the project would.
Prints each path's best client CPU (process time, so the server's own work is not counted)
and their ratio; the figure docs/ARCHITECTURE.md cites for fast_insert.py (7 ms against 110 ms).
"""

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from pymilvus import DataType, MilvusClient

from feature_pipeline_dagster.core.store.fast_insert import insert_columns
from feature_pipeline_dagster.core.store.lite_server import LiteServer
from feature_pipeline_dagster_tests.core.test_fast_insert import DIM, make_rows, public_rows


def new_collection(client) -> str:
    name = f"b_{uuid.uuid4().hex[:8]}"
    schema = MilvusClient.create_schema(auto_id=True, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True, auto_id=True)
    schema.add_field("video_path", DataType.VARCHAR, max_length=1024)
    for field, dtype in (("frame_id", DataType.INT32), ("timestamp_ms", DataType.INT64),
                         ("generation", DataType.INT64), ("row_idx", DataType.INT16), ("col_idx", DataType.INT16)):
        schema.add_field(field, dtype)
    schema.add_field("embeddings", DataType.FLOAT_VECTOR, dim=DIM)
    index = client.prepare_index_params()
    index.add_index(field_name="embeddings", index_type="AUTOINDEX", metric_type="COSINE")
    client.create_collection(name, schema=schema, index_params=index)
    return name


def best_cpu_ms(insert, repeats: int) -> float:
    insert()  # warm
    spent = []
    for _ in range(repeats):
        start = time.process_time()
        insert()
        spent.append(time.process_time() - start)
    return min(spent) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "bench.db"
        try:
            state = LiteServer(data).ensure_running()
            client = MilvusClient(uri=state.uri, token="", timeout=60, dedicated=True)
            collection = new_collection(client)
            vectors, columns = make_rows(args.rows, seed=3)
            fast = best_cpu_ms(lambda: insert_columns(client, collection, "embeddings", vectors, columns), args.repeats)
            public = best_cpu_ms(lambda: client.insert(collection, public_rows(vectors, columns)), args.repeats)
            client.close()
        finally:
            LiteServer(data).stop()
    per = 1000 / args.rows
    print(f"client CPU per 1000 rows of {DIM}-d (best of {args.repeats}): insert_columns {fast * per:.1f} ms, "
          f"client.insert {public * per:.1f} ms; client.insert / insert_columns = {public / fast:.1f}x")


if __name__ == "__main__":
    main()
