"""The pipeline's YAML file (the seed format) parsed into typed, validated settings.

Every mistake is one `ConfigError` naming the file and the key, raised when the file is
read: before a model loads, a video opens or Milvus is touched. Relative paths resolve
against the working directory, as the seed's `python main.py --config_path ...` did.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from feature_pipeline_dagster.core.errors import ConfigError
from feature_pipeline_dagster.core.models import FAMILIES, option_owners
from feature_pipeline_dagster.core.decode.backends import DECODERS, SAMPLINGS

CONFIG_ENV = "FEATURE_PIPELINE_CONFIG"
DEFAULT_CONFIG = "config/clip-config.yaml"

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts")
INT_RANGES = {"INT8": 2**7 - 1, "INT16": 2**15 - 1, "INT32": 2**31 - 1, "INT64": 2**63 - 1}
SCALAR_DTYPES = {*INT_RANGES, "BOOL", "FLOAT", "DOUBLE", "VARCHAR"}
VECTOR_DTYPE = "FLOAT_VECTOR"
# Fields every row carries whatever the model; added to a collection that omits them.
IMPLICIT_FIELDS = {"timestamp_ms": "INT64", "generation": "INT64"}
DEVICE_PATTERN = re.compile(r"^(cpu(:\d+)?|cuda(:\d+)?|mps|auto)$")
MODEL_KEYS = {"name", "path", "source", "features", "batch_size", "dtype"}
# Vector index types a config may name. Milvus Lite 3.2 builds FLAT, IVF_FLAT, IVF_SQ8, HNSW
# and AUTOINDEX (tested: core/test_store.py); DISKANN is server-only (Lite accepts the
# index and then fails to build it at search time), so on Lite the store uses AUTOINDEX.
INDEX_TYPES = ("AUTOINDEX", "FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW", "DISKANN", "SCANN")
MAX_EF = 16384  # Milvus' limit on HNSW's ef (and on rows per query vector)
LITE_INDEX_TYPES = ("AUTOINDEX", "FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW")
PLACEMENTS = ("local", "kubernetes")


@dataclass(frozen=True)
class FieldSpec:
    name: str
    dtype: str
    is_primary: bool = False
    auto_id: bool = False
    max_length: int | None = None
    dim: int | None = None


@dataclass(frozen=True)
class IndexSpec:
    """`db.collections[].index`: the vector index and how searches walk it. The default,
    AUTOINDEX with no parameters, works on Milvus Lite and on every server; see the
    README's "Milvus server: indexes at scale" for the choice at 10^8-10^9 rows."""

    type: str = "AUTOINDEX"
    metric: str = "COSINE"
    params: tuple[tuple[str, Any], ...] = ()  # build parameters, e.g. (("M", 16), ("efConstruction", 200))
    search: tuple[tuple[str, Any], ...] = ()  # search parameters, e.g. (("ef", 64), ("ef_text", 1024))


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    fields: tuple[FieldSpec, ...]
    index: IndexSpec = IndexSpec()
    partition_key: bool = True  # video_path as the partition key (a server hashes videos to partitions)

    @property
    def vector_field(self) -> FieldSpec:
        return next(f for f in self.fields if f.dtype == VECTOR_DTYPE)

    def field(self, name: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.name == name), None)


@dataclass(frozen=True, init=False)
class ModelSettings:
    """`model.*`: the keys every family takes, and `options`, the family's own keys
    (declared by its folder under core/models) with its defaults filled in, read as
    attributes: `model.arch`, `model.merge_size`."""

    name: str
    path: str
    source: str = "huggingface"
    features: tuple[str, ...] = ("video_embedding",)
    batch_size: int = 32
    dtype: str = "auto"
    options: tuple[tuple[str, Any], ...] = ()

    def __init__(self, name: str, path: str, source: str = "huggingface", features: tuple[str, ...] = ("video_embedding",),
                 batch_size: int = 32, dtype: str = "auto", **options):
        options = {**dict(options.pop("options", ())), **options}  # dataclasses.replace passes them back
        declared = FAMILIES[name].options
        unknown = set(options) - set(declared)
        if unknown:
            raise TypeError(f"model {name} takes no option {', '.join(sorted(unknown))}")
        values = {key: options.get(key, option.default) for key, option in declared.items()}
        for key, value in (("name", name), ("path", path), ("source", source), ("features", tuple(features)),
                           ("batch_size", batch_size), ("dtype", dtype), ("options", tuple(sorted(values.items())))):
            object.__setattr__(self, key, value)

    def __getattr__(self, key: str):
        for option, value in self.__dict__.get("options", ()):
            if option == key:
                return value
        raise AttributeError(f"model {self.__dict__.get('name')} has no setting {key!r}")


@dataclass(frozen=True)
class VideoInput:
    path: Path
    sample_fps: float = 1.0
    max_frames: int | None = None
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS
    settle_seconds: float = 5.0  # a file must stop changing this long before it is embedded
    decoder: str = "auto"  # auto | decord | torchcodec | pyav | nvdec (core/decode/backends)
    sampling: str = "fps"  # fps: one frame per 1/sample_fps s; keyframes: key frames, at most sample_fps/s;
    # nearest: one frame per 1/sample_fps s, the cheapest to decode within max_shift_ms of its time
    max_shift_ms: float | None = None  # nearest only; None: a quarter of the sample interval

    @property
    def shift_ms(self) -> float:
        """`max_shift_ms` as `nearest` sampling reads it (its default resolved)."""
        return self.max_shift_ms if self.max_shift_ms is not None else 250.0 / self.sample_fps


@dataclass(frozen=True)
class DbSettings:
    uri: str  # a Milvus server URL, or a Milvus Lite file (db/<db.name> by default)
    collections: tuple[CollectionSpec, ...]
    token_env: str | None = None
    batch_size: int = 1000
    lite_idle_minutes: float | None = None  # the Lite server stops after this long without a client; None: 10

    @property
    def is_lite(self) -> bool:
        return self.uri.endswith(".db")


@dataclass(frozen=True)
class KubernetesSettings:
    """`kubernetes.*`, read with `placement: kubernetes`: each run is its own pod with one
    GPU (Dagster's K8sRunLauncher; orchestration/placement.py builds the run's tag)."""

    gpus: int  # GPUs the cluster lends these runs: the run queue's limit
    image: str  # the user-code image (deploy/Dockerfile)
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[tuple[tuple[str, Any], ...], ...] = ()
    token_secret: str | None = None  # a Secret holding the Milvus token, as env db.token_env
    token_secret_key: str = "token"


@dataclass(frozen=True)
class SavedSearch:
    """`search.watch[]`: a query whose matches among each run's new videos are reported."""

    name: str
    threshold: float  # cosine a video's best frame must reach
    text: str | None = None
    image: Path | None = None


@dataclass(frozen=True)
class Settings:
    source: Path
    model: ModelSettings
    video_input: VideoInput
    gpus: tuple[str, ...]
    db: DbSettings
    logs_dir: Path = field(default=Path("logs"))
    runs_per_device: int = 1
    placement: str = "local"  # local: runs on this host's devices; kubernetes: one pod and one GPU per run
    kubernetes: KubernetesSettings | None = None
    watch: tuple[SavedSearch, ...] = ()  # search.watch

    def collection_for(self, feature: str) -> CollectionSpec:
        return self.db.collections[self.model.features.index(feature)]


class _Node:
    """A mapping in the YAML file that knows its own key path, so errors can name it."""

    def __init__(self, data: Any, key: str, source: Path):
        self.key, self.source = key, source
        if not isinstance(data, dict):
            self.fail(f"expected a mapping, got {type(data).__name__}")
        self.data = data

    def fail(self, message: str, key: str | None = None):
        where = f"{self.key}.{key}" if key and self.key else (key or self.key)
        raise ConfigError(f"{self.source}: {where}: {message}")

    def check_keys(self, allowed: set[str]) -> None:
        for key in self.data:
            if key not in allowed:
                self.fail(f"unknown key (expected one of: {', '.join(sorted(allowed))})", key)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., required=False):
        if key not in self.data or self.data[key] is None:
            if required or default is ...:
                self.fail("missing required key", key)
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            self.fail(f"expected {names}, got {value!r}", key)
        return value

    def positive(self, key: str, kind: type, default: Any = ...):
        value = self.get(key, kind, default)
        if value is not None and value <= 0:
            self.fail(f"must be positive, got {value!r}", key)
        return value

    def child(self, key: str) -> _Node:
        return _Node(self.get(key, dict, required=True), _join(self.key, key), self.source)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def config_path() -> Path:
    """The file named by FEATURE_PIPELINE_CONFIG, or the default CLIP config."""
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_settings(path: str | os.PathLike | None = None, check_paths: bool = True) -> Settings:
    """Parse and validate; `check_paths=False` skips the checks that the input folder and
    a local model exist (for commands that create them)."""
    source = Path(path) if path else config_path()
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{source}: cannot read the config file ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}".replace("\n", " ")) from None
    root = _Node(data if data is not None else {}, "", source)
    root.check_keys({"model", "video_input", "gpus", "runs_per_device", "db", "logs", "placement", "kubernetes",
                     "search"})
    model = _parse_model(root.child("model"), check_paths)
    video_input = _parse_video_input(root.child("video_input"), check_paths)
    gpus = _parse_gpus(root)
    db = _parse_db(root.child("db"), model)
    logs = root.get("logs", dict, {}) or {}
    logs_dir = Path(_Node(logs, "logs", source).get("path", str, "logs"))
    runs_per_device = root.positive("runs_per_device", int, 1)
    placement = root.get("placement", str, "local")
    if placement not in PLACEMENTS:
        root.fail(f"unknown placement {placement!r} (expected local or kubernetes)", "placement")
    kubernetes = None
    if placement == "kubernetes":
        kubernetes = _parse_kubernetes(root.child("kubernetes"), db)
    elif root.get("kubernetes", dict, None) is not None:
        root.fail("only placement: kubernetes reads this block (placement is local)", "kubernetes")
    watch = _parse_watch(_Node(root.get("search", dict, {}), "search", source), model, check_paths)
    return Settings(source, model, video_input, gpus, db, logs_dir, runs_per_device, placement, kubernetes, watch)


def _parse_watch(node: _Node, model: ModelSettings, check_paths: bool) -> tuple[SavedSearch, ...]:
    """`search.watch`: checked here so that a query no run could embed (text without a
    text tower, a missing picture) fails at load, not once per video."""
    node.check_keys({"watch"})
    family, searches = FAMILIES[model.name], []
    for i, raw in enumerate(node.get("watch", list, [])):
        entry = _Node(raw, f"search.watch[{i}]", node.source)
        entry.check_keys({"name", "text", "image", "threshold"})
        name = entry.get("name", str, required=True).strip()
        if not name or name in {s.name for s in searches}:
            entry.fail(f"{'a second' if name else 'an empty'} saved search named {name!r}", "name")
        if family.patch_grid:
            entry.fail(f"model {model.name} stores patch rows; saved searches score one vector per frame (CLIP)")
        text, image = entry.get("text", str, None), entry.get("image", str, None)
        if (text is None) == (image is None):
            entry.fail("give text or image, not both or neither")
        if text is not None and not text.strip():
            entry.fail("the text is empty", "text")
        if text is not None and not family.text_tower:
            entry.fail(f"model {model.name} has no text tower: watch with an image", "text")
        if image is not None and check_paths and not Path(image).is_file():
            entry.fail(f"no such file: {image}", "image")
        threshold = entry.get("threshold", float, required=True)
        if not -1 <= threshold <= 1:
            entry.fail(f"a cosine, between -1 and 1, got {threshold!r}", "threshold")
        searches.append(SavedSearch(name, threshold, text, Path(image) if image is not None else None))
    return tuple(searches)


def _parse_kubernetes(node: _Node, db: DbSettings) -> KubernetesSettings:
    node.check_keys({"gpus", "image", "node_selector", "tolerations", "token_secret", "token_secret_key"})
    selector = node.get("node_selector", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in selector.items()):
        node.fail("expected a mapping of label to string value, e.g. {nvidia.com/gpu.present: \"true\"}", "node_selector")
    tolerations = node.get("tolerations", list, [])
    for i, toleration in enumerate(tolerations):
        if not isinstance(toleration, dict) or not toleration:
            node.fail("expected a Kubernetes toleration, e.g. {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}",
                      f"tolerations[{i}]")
    token_secret = node.get("token_secret", str, None)
    if token_secret and not db.token_env:
        node.fail("names the Secret for db.token_env's variable, but db.token_env is not set", "token_secret")
    return KubernetesSettings(
        gpus=node.positive("gpus", int),
        image=node.get("image", str, required=True),
        node_selector=tuple(sorted(selector.items())),
        tolerations=tuple(tuple(sorted(t.items())) for t in tolerations),
        token_secret=token_secret,
        token_secret_key=node.get("token_secret_key", str, "token"),
    )


def _parse_model(node: _Node, check_paths: bool) -> ModelSettings:
    node.check_keys(MODEL_KEYS | {key for family in FAMILIES.values() for key in family.options})
    name = node.get("name", str, required=True)
    if name not in FAMILIES:
        node.fail(f"unknown model {name!r} (expected one of: {', '.join(FAMILIES)})", "name")
    family = FAMILIES[name]
    for key, value in node.data.items():
        if key not in MODEL_KEYS and key not in family.options and value is not None:
            node.fail(f"only {' or '.join(option_owners(key))} takes {key} (model.name is {name})", key)
    options = {}
    for key, option in family.options.items():
        value = node.positive(key, option.kind, option.default) if option.positive else node.get(key, option.kind, option.default)
        if option.choices and value not in option.choices:
            node.fail(f"expected {' or '.join(map(str, option.choices))}, got {value!r}", key)
        options[key] = value
    source = node.get("source", str, "huggingface")
    if source not in ("huggingface", "folder"):
        node.fail(f"unknown source {source!r} (expected huggingface or folder)", "source")
    path = node.get("path", str, required=True)
    if check_paths and source == "folder" and not Path(path).exists():
        node.fail(f"no such file or folder: {path} (see `feature-pipeline models --help`)", "path")
    features = node.get("features", list, ["video_embedding"])
    if not features or not all(isinstance(f, str) and re.fullmatch(r"[A-Za-z_]\w*", f) for f in features):
        node.fail("expected a list of asset names (letters, digits, underscores)", "features")
    try:
        family.dimension(ModelSettings(name=name, path=path, source=source, **options))
    except LookupError as err:
        key, message = err.args
        node.fail(message, key)
    dtype = node.get("dtype", str, "auto")
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        node.fail(f"unknown dtype {dtype!r} (expected auto, float32, bfloat16 or float16)", "dtype")
    return ModelSettings(name=name, path=path, source=source, features=tuple(features),
                         batch_size=node.positive("batch_size", int, 32), dtype=dtype, **options)


def _parse_video_input(node: _Node, check_paths: bool) -> VideoInput:
    node.check_keys({"path", "sample_fps", "max_frames", "extensions", "settle_seconds", "decoder", "sampling",
                     "max_shift_ms"})
    decoder = node.get("decoder", str, "auto")
    if decoder not in DECODERS:
        node.fail(f"unknown decoder {decoder!r} (expected one of: {', '.join(DECODERS)})", "decoder")
    sampling = node.get("sampling", str, "fps")
    if sampling not in SAMPLINGS:
        node.fail(f"unknown sampling {sampling!r} (expected fps, keyframes or nearest)", "sampling")
    max_shift_ms = node.get("max_shift_ms", float, None)
    if max_shift_ms is not None and not 0 <= max_shift_ms < float("inf"):
        node.fail(f"must be a number of milliseconds >= 0, got {max_shift_ms!r}", "max_shift_ms")
    path = Path(node.get("path", str, required=True))
    if check_paths and not path.is_dir():
        node.fail(f"no such folder: {path}", "path")
    extensions = node.get("extensions", list, list(VIDEO_EXTENSIONS))
    if not extensions or not all(isinstance(e, str) and e for e in extensions):
        node.fail("expected a list of file extensions such as .mp4", "extensions")
    return VideoInput(
        path=path,
        sample_fps=node.positive("sample_fps", float, 1.0),
        max_frames=node.positive("max_frames", int, None),
        extensions=tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions),
        settle_seconds=node.get("settle_seconds", float, 5.0),
        decoder=decoder,
        sampling=sampling,
        max_shift_ms=max_shift_ms,
    )


def _parse_gpus(root: _Node) -> tuple[str, ...]:
    gpus = root.get("gpus", (list, str), ["auto"])
    gpus = [gpus] if isinstance(gpus, str) else gpus
    if not gpus:
        root.fail("expected at least one device", "gpus")
    for i, device in enumerate(gpus):
        if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
            root.fail(f"unknown device {device!r} (expected cuda:N, mps, cpu, cpu:N or auto)", f"gpus[{i}]")
    if "auto" in gpus and len(gpus) > 1:
        root.fail("'auto' stands alone: it means every visible device", "gpus")
    return tuple(gpus)


def _parse_db(node: _Node, model: ModelSettings) -> DbSettings:
    for secret in ("token", "password", "user"):
        if secret in node.data:
            node.fail("credentials never go in the file: name an environment variable in db.token_env", secret)
    node.check_keys({"type", "name", "uri", "token_env", "batch_size", "lite_idle_minutes", "collections"})
    if node.get("type", str, "milvus") != "milvus":
        node.fail("only 'milvus' is supported", "type")
    name = node.get("name", str, "feature_pipeline.db")
    uri = node.get("uri", str, None)
    if uri is None:
        if not name.endswith(".db"):
            node.fail(f"a Milvus Lite file name ends in .db, got {name!r}", "name")
        uri = str(Path("db") / name)
    if not (uri.endswith(".db") or re.match(r"^(https?|tcp|unix)://", uri)):
        node.fail(f"expected a Milvus server URL (http://host:19530) or a path ending in .db, got {uri!r}", "uri")
    token_env = node.get("token_env", str, None)
    collections = node.get("collections", list, required=True)
    if len(collections) != len(model.features):
        node.fail(
            f"{len(collections)} collection(s) for {len(model.features)} feature(s) in model.features: "
            "give one collection per feature, in the same order",
            "collections",
        )
    specs = tuple(
        _parse_collection(_Node(c, f"{node.key}.collections[{i}]", node.source), model)
        for i, c in enumerate(collections)
    )
    idle = node.get("lite_idle_minutes", float, 0.0)
    if not idle >= 0:
        node.fail(f"expected a positive number of minutes (0: the default, 10), got {idle!r}", "lite_idle_minutes")
    return DbSettings(uri, specs, token_env, node.positive("batch_size", int, 1000), idle or None)


def _parse_collection(node: _Node, model: ModelSettings) -> CollectionSpec:
    node.check_keys({"name", "fields", "index", "partition_key"})
    name = node.get("name", str, required=True)
    if not re.fullmatch(r"[A-Za-z_]\w{0,254}", name):
        node.fail(f"{name!r} is not a valid Milvus collection name (letters, digits, underscores)", "name")
    raw_fields = node.get("fields", list, required=True)
    fields = [_parse_field(_Node(f, f"{node.key}.fields[{i}]", node.source)) for i, f in enumerate(raw_fields)]
    names = [f.name for f in fields]
    for dup in {n for n in names if names.count(n) > 1}:
        node.fail(f"field {dup!r} is declared twice", "fields")
    primaries = [f for f in fields if f.is_primary]
    if len(primaries) != 1 or not primaries[0].auto_id or primaries[0].dtype != "INT64":
        node.fail("expected exactly one primary key: {name: id, dtype: INT64, is_primary: true, auto_id: true}", "fields")
    vectors = [f for f in fields if f.dtype == VECTOR_DTYPE]
    if len(vectors) != 1:
        node.fail(f"expected exactly one {VECTOR_DTYPE} field, found {len(vectors)}", "fields")
    family = FAMILIES[model.name]
    expected_dim = family.dimension(model)
    if expected_dim is not None and vectors[0].dim != expected_dim:
        node.fail(
            f"dim {vectors[0].dim} does not match model {model.name} ({family.label(model)}), "
            f"which gives {expected_dim}-d vectors",
            f"fields[{names.index(vectors[0].name)}].dim",
        )
    produced = {"video_path", *family.row_fields, *IMPLICIT_FIELDS}
    for i, f in enumerate(fields):
        if f.is_primary or f.dtype == VECTOR_DTYPE:
            continue
        if f.name not in produced:
            node.fail(
                f"{f.name!r} is not produced by model {model.name} (it gives {', '.join(sorted(produced))})",
                f"fields[{i}].name",
            )
        if f.name == "video_path" and f.dtype != "VARCHAR":
            node.fail("video_path must be VARCHAR", f"fields[{i}].dtype")
        if f.name != "video_path" and f.dtype not in INT_RANGES:
            node.fail(f"{f.name} must be an integer dtype (INT16, INT32, INT64), got {f.dtype}", f"fields[{i}].dtype")
    for required in ("video_path", *family.row_fields):
        if required not in names:
            node.fail(f"missing field {required!r}, which model {model.name} writes into every row", "fields")
    fields += [FieldSpec(n, t) for n, t in IMPLICIT_FIELDS.items() if n not in names]
    index = _parse_index(_Node(node.get("index", dict, {}), f"{node.key}.index", node.source))
    return CollectionSpec(name, tuple(fields), index, node.get("partition_key", bool, True))


def _parse_index(node: _Node) -> IndexSpec:
    node.check_keys({"type", "metric", "params", "search_params"})
    kind = node.get("type", str, "AUTOINDEX").upper()
    if kind not in INDEX_TYPES:
        node.fail(f"unknown index type {kind!r} (expected one of: {', '.join(INDEX_TYPES)})", "type")
    metric = node.get("metric", str, "COSINE").upper()
    if metric not in ("COSINE", "IP", "L2"):
        node.fail(f"unknown metric {metric!r} (expected COSINE, IP or L2)", "metric")
    params, search = node.get("params", dict, {}), node.get("search_params", dict, {})
    for key, given in (("params", params), ("search_params", search)):
        if not all(isinstance(k, str) and isinstance(v, (int, float, str)) for k, v in given.items()):
            node.fail("expected a mapping of parameter name to number, e.g. {M: 16, efConstruction: 200}", key)
    for key in ("ef", "ef_text"):  # HNSW's candidate list per query kind (core/store/milvus/store.py search_ef)
        value = search.get(key)
        if value is not None and not (type(value) is int and 1 <= value <= MAX_EF):
            node.fail(f"must be a whole number from 1 to {MAX_EF} (HNSW's candidate list), got {value!r}",
                      f"search_params.{key}")
    return IndexSpec(kind, metric, tuple(sorted(params.items())), tuple(sorted(search.items())))


def _parse_field(node: _Node) -> FieldSpec:
    node.check_keys({"name", "dtype", "is_primary", "auto_id", "max_length", "dim", "description"})
    name = node.get("name", str, required=True)
    dtype = node.get("dtype", str, required=True).upper()
    if dtype not in SCALAR_DTYPES | {VECTOR_DTYPE}:
        node.fail(f"unknown dtype {dtype!r} (expected one of: {', '.join(sorted(SCALAR_DTYPES | {VECTOR_DTYPE}))})", "dtype")
    spec = FieldSpec(
        name=name,
        dtype=dtype,
        is_primary=node.get("is_primary", bool, False),
        auto_id=node.get("auto_id", bool, False),
        max_length=node.positive("max_length", int, None),
        dim=node.positive("dim", int, None),
    )
    if dtype == "VARCHAR" and spec.max_length is None:
        node.fail("VARCHAR fields need max_length", "max_length")
    if dtype == VECTOR_DTYPE and spec.dim is None:
        node.fail(f"{VECTOR_DTYPE} fields need dim", "dim")
    return spec
