"""The pipeline's YAML file (the seed format) parsed into typed, validated settings.

Every key is declared once, on the dataclass attribute it fills (`key(...)`: type, default,
choices, one line of help; core/config_keys.py); the file is checked from those
declarations and docs/configuration.md's reference is generated from them
(`python -m feature_pipeline_dagster.core.settings --reference`). What no declaration can
say (one key against another, a path that must exist) is checked by the section's parser.

Every mistake is one `ConfigError` naming the file and the key, raised when the file is
read: before a model loads, a video opens or Milvus is touched. Relative paths resolve
against the working directory, as the seed's `python main.py --config_path ...` did.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from feature_pipeline_dagster.core.config_keys import Node, declared, key, reference
from feature_pipeline_dagster.core.decode.backends import DECODERS, SAMPLINGS
from feature_pipeline_dagster.core.decode.spec import DecodeSpec
from feature_pipeline_dagster.core.errors import ConfigError
from feature_pipeline_dagster.core.models import FAMILIES, option_owners

CONFIG_ENV = "FEATURE_PIPELINE_CONFIG"
DEFAULT_CONFIG = "config/clip-config.yaml"

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts")
INT_RANGES = {"INT8": 2**7 - 1, "INT16": 2**15 - 1, "INT32": 2**31 - 1, "INT64": 2**63 - 1}
SCALAR_DTYPES = {*INT_RANGES, "BOOL", "FLOAT", "DOUBLE", "VARCHAR"}
VECTOR_DTYPE = "FLOAT_VECTOR"
# Fields every row carries whatever the model; added to a collection that omits them.
IMPLICIT_FIELDS = {"timestamp_ms": "INT64", "generation": "INT64"}
DEVICE_PATTERN = re.compile(r"^(cpu(:\d+)?|cuda(:\d+)?|mps|auto)$")
# Vector index types a config may name. Milvus Lite 3.2 builds FLAT, IVF_FLAT, IVF_SQ8, HNSW
# and AUTOINDEX (tested: core/test_store.py); DISKANN is server-only (Lite accepts the
# index and then fails to build it at search time), so on Lite the store uses AUTOINDEX.
INDEX_TYPES = ("AUTOINDEX", "FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW", "DISKANN", "SCANN")
MAX_EF = 16384  # Milvus' limit on HNSW's ef (and on rows per query vector)
LITE_INDEX_TYPES = ("AUTOINDEX", "FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW")
PLACEMENTS = ("local", "kubernetes")


def is_lite_file(uri: str) -> bool:
    """A Milvus Lite file (the store starts its server), not a server's URL: the one test of it."""
    return uri.endswith(".db")


def _numbers(params: dict):
    if not all(isinstance(k, str) and isinstance(v, (int, float, str)) for k, v in params.items()):
        return "expected a mapping of parameter name to number, e.g. {M: 16, efConstruction: 200}"
    return None


def _search_ef(search: dict):
    for name in ("ef", "ef_text"):  # HNSW's candidate list per query kind (core/store/milvus/store.py search_ef)
        value = search.get(name)
        if value is not None and not (type(value) is int and 1 <= value <= MAX_EF):
            return f".{name}", f"must be a whole number from 1 to {MAX_EF} (HNSW's candidate list), got {value!r}"
    return None


def _check_gpus(gpus: list[str] | str):
    gpus = [gpus] if isinstance(gpus, str) else gpus
    if not gpus:
        return "expected at least one device"
    for i, device in enumerate(gpus):
        if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
            return f"[{i}]", f"unknown device {device!r} (expected cuda:N, mps, cpu, cpu:N or auto)"
    if "auto" in gpus and len(gpus) > 1:
        return "'auto' stands alone: it means every visible device"
    return None


def _check_tolerations(tolerations: list):
    for i, toleration in enumerate(tolerations):
        if not isinstance(toleration, dict) or not toleration:
            return f"[{i}]", ("expected a Kubernetes toleration, e.g. {key: nvidia.com/gpu, operator: Exists, "
                              "effect: NoSchedule}")
    return None


@dataclass(frozen=True)
class FieldSpec:
    name: str = key("video_path, a row field of the model (frame_id, timestamp_ms, row_idx, col_idx), "
                    "the primary key or the vector")
    dtype: str = key("the Milvus type", choices=tuple(sorted(SCALAR_DTYPES | {VECTOR_DTYPE})), noun="dtype",
                     upper=True)
    is_primary: bool = key("the primary key: exactly one, {name: id, dtype: INT64, is_primary: true, "
                           "auto_id: true}", False)
    auto_id: bool = key("Milvus numbers the rows (the primary key)", False)
    max_length: int | None = key("VARCHAR: the most bytes (required there)", None, positive=True)
    dim: int | None = key("FLOAT_VECTOR: the vector's dimension, the model's (required there)", None, positive=True)
    description: str | None = key("a note for readers of the file; not sent to Milvus", None, compare=False)


@dataclass(frozen=True)
class IndexSpec:
    """`db.collections[].index`: the vector index and how searches walk it. The default,
    AUTOINDEX with no parameters, works on Milvus Lite and on every server; see the
    docs/operations.md "Milvus server: indexes at scale" for the choice at 10^8-10^9 rows."""

    type: str = key("the vector index (on Milvus Lite, one it cannot build is AUTOINDEX)", "AUTOINDEX",
                    choices=INDEX_TYPES, noun="index type", upper=True)
    metric: str = key("the similarity searches rank by", "COSINE", choices=("COSINE", "IP", "L2"), noun="metric",
                      upper=True)
    params: tuple[tuple[str, Any], ...] = key("build parameters, e.g. {M: 16, efConstruction: 200}", (),
                                              check=_numbers)
    search: tuple[tuple[str, Any], ...] = key(
        f"search parameters, e.g. {{ef: 64}}; ef and ef_text (HNSW's candidate list for image and text "
        f"queries) 1 to {MAX_EF}", (), check=lambda search: _numbers(search) or _search_ef(search),
        name="search_params")


@dataclass(frozen=True)
class CollectionSpec:
    name: str = key("the Milvus collection", check=lambda name: None if re.fullmatch(r"[A-Za-z_]\w{0,254}", name)
                    else f"{name!r} is not a valid Milvus collection name (letters, digits, underscores)")
    fields: tuple[FieldSpec, ...] = key("the row's fields, one FLOAT_VECTOR among them")
    index: IndexSpec = key("the vector index and its search parameters", IndexSpec())
    partition_key: bool = key("video_path as the partition key (a server hashes videos to partitions)", True)

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

    name: str = key("the model family", choices=tuple(FAMILIES), noun="model", registry=True)
    path: str = key("huggingface: an open_clip pretrained tag, hf-hub:org/repo or a hub repo (fetched on "
                    "first use); folder: a local weights file or folder")
    source: str = key("where path points", "huggingface", choices=("huggingface", "folder"), noun="source")
    features: tuple[str, ...] = key(
        "asset names: one embedding asset and one collection per feature, in the same order", ("video_embedding",),
        check=lambda given: None if given and all(isinstance(f, str) and re.fullmatch(r"[A-Za-z_]\w*", f)
                                                  for f in given)
        else "expected a list of asset names (letters, digits, underscores)")
    batch_size: int = key("frames per forward pass", 32, positive=True)
    dtype: str = key("auto: float32 on a CPU or MPS, bfloat16 on CUDA", "auto",
                     choices=("auto", "float32", "bfloat16", "float16"), noun="dtype")
    options: tuple[tuple[str, Any], ...] = ()

    def __init__(self, name: str, path: str, **given):
        given = {**dict(given.pop("options", ())), **given}  # dataclasses.replace passes them back
        own = FAMILIES[name].options
        unknown = set(given) - set(own) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"model {name} takes no option {', '.join(sorted(unknown))}")
        for f in dataclasses.fields(self):
            if f.name not in ("name", "path", "options"):
                object.__setattr__(self, f.name, given.get(f.name, f.default))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "options", tuple(sorted((k, given.get(k, o.default)) for k, o in own.items())))

    def __getattr__(self, key: str):
        for option, value in self.__dict__.get("options", ()):
            if option == key:
                return value
        raise AttributeError(f"model {self.__dict__.get('name')} has no setting {key!r}")


@dataclass(frozen=True)
class VideoInput:
    path: Path = key("the folder of videos, watched by the sensor")
    sample_fps: float = key("frames per second of video to embed", 1.0, positive=True)
    max_frames: int | None = key("a cap per video, spread evenly over it; none: no cap", None, positive=True)
    extensions: tuple[str, ...] = key(
        "the file extensions that are videos", VIDEO_EXTENSIONS,
        check=lambda given: None if given and all(isinstance(e, str) and e for e in given)
        else "expected a list of file extensions such as .mp4")
    settle_seconds: float = key("a file must stop changing this long before it is embedded", 5.0)
    decoder: str = key("the decoder backend; auto: PyAV (never nvdec)", "auto",
                       choices=DECODERS, noun="decoder")
    sampling: str = key("fps: one frame per 1/sample_fps s; keyframes: key frames, at most sample_fps a second; "
                        "nearest: one per 1/sample_fps s, the cheapest to decode within max_shift_ms of its time",
                        "fps", choices=SAMPLINGS, noun="sampling")
    max_shift_ms: float | None = key(
        "nearest only: how far a frame may lie from its time; none: a quarter of 1/sample_fps", None,
        check=lambda ms: None if 0 <= ms < math.inf else f"must be a number of milliseconds >= 0, got {ms!r}")

    @property
    def decode(self) -> DecodeSpec:
        """The decoding keys as one value, passed whole to the decoder and the page."""
        return DecodeSpec(self.decoder, self.sample_fps, self.max_frames, self.sampling, self.max_shift_ms)

    @property
    def shift_ms(self) -> float:
        """`max_shift_ms` as `nearest` sampling reads it (its default resolved)."""
        return self.decode.shift_ms


@dataclass(frozen=True, kw_only=True)
class DbSettings:
    type: str = key("the vector database", "milvus",
                    check=lambda kind: None if kind == "milvus" else "only 'milvus' is supported")
    name: str = key("the Milvus Lite file db/NAME, used when there is no uri", "feature_pipeline.db")
    uri: str = key("a Milvus server URL (http://host:19530) or a Milvus Lite file (a path ending in .db); "
                   "none: db/NAME (db.name)", None,
                   check=lambda uri: None if is_lite_file(uri) or re.match(r"^(https?|tcp|unix)://", uri)
                   else f"expected a Milvus server URL (http://host:19530) or a path ending in .db, got {uri!r}")
    token_env: str | None = key("the environment variable holding the server's token (credentials never go "
                                "in the file)", None)
    batch_size: int = key("rows per insert", 1000, positive=True)
    lite_idle_minutes: float | None = key(
        "a Milvus Lite server stops itself after this long without a client; none or 0: 10", None,
        check=lambda idle: None if idle >= 0 else
        f"expected a positive number of minutes (0: the default, 10), got {idle!r}")
    collections: tuple[CollectionSpec, ...] = key("one per model.features entry, in the same order")

    @property
    def is_lite(self) -> bool:
        return is_lite_file(self.uri)


@dataclass(frozen=True, kw_only=True)
class KubernetesSettings:
    """`kubernetes.*`, read with `placement: kubernetes`: each run is its own pod with one
    GPU (Dagster's K8sRunLauncher; orchestration/placement.py builds the run's tag)."""

    gpus: int = key("GPUs the cluster lends these runs: the run queue's limit", positive=True)
    image: str = key("the user-code image (deploy/Dockerfile)")
    node_selector: tuple[tuple[str, str], ...] = key(
        "the run pods' node selector", (),
        check=lambda selector: None if all(isinstance(k, str) and isinstance(v, str) for k, v in selector.items())
        else "expected a mapping of label to string value, e.g. {nvidia.com/gpu.present: \"true\"}")
    tolerations: tuple[tuple[tuple[str, Any], ...], ...] = key(
        "the run pods' tolerations", (), check=_check_tolerations)
    token_secret: str | None = key("a Secret holding the Milvus token, given to the pods as db.token_env", None)
    token_secret_key: str = key("the key of the token in token_secret", "token")


@dataclass(frozen=True)
class SavedSearch:
    """`search.watch[]`: a query whose matches among each run's new videos are reported."""

    name: str = key("names the search in reports")
    threshold: float = key("the cosine a video's best frame must reach",
                           check=lambda t: None if -1 <= t <= 1 else f"a cosine, between -1 and 1, got {t!r}")
    text: str | None = key("a text query (CLIP only); give text or image", None)
    image: Path | None = key("a query picture; give text or image", None)


@dataclass(frozen=True, kw_only=True)
class Settings:
    source: Path  # the file read
    model: ModelSettings = key("the model")
    video_input: VideoInput = key("the videos and how they are decoded")
    gpus: tuple[str, ...] = key("devices runs use: cuda:N, mps, cpu, cpu:N, or auto (every visible device, alone)",
                                ("auto",), kind=(list, str), check=_check_gpus)
    db: DbSettings = key("the vector store")
    logs_dir: Path = key("where per-run log files go", Path("logs"), name="logs.path")
    runs_per_device: int = key("runs that may use one device at once", 1, positive=True)
    placement: str = key("local: runs on this host's devices; kubernetes: one pod and one GPU per run", "local",
                         choices=PLACEMENTS, noun="placement")
    kubernetes: KubernetesSettings | None = key("read with placement: kubernetes only", None)
    watch: tuple[SavedSearch, ...] = key("saved searches: each run reports its new videos that match", (),
                                         name="search.watch")

    def collection_for(self, feature: str) -> CollectionSpec:
        return self.db.collections[self.model.features.index(feature)]


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
    root = Node(data if data is not None else {}, "", source)
    values = root.read_keys(Settings)
    model = _parse_model(root.child("model"), check_paths)
    video_input = _parse_video_input(root.child("video_input"), check_paths)
    db = _parse_db(root.child("db"), model)
    logs = root.child("logs", required=False)
    kubernetes = None
    if values["placement"] == "kubernetes":
        kubernetes = _parse_kubernetes(root.child("kubernetes"), db)
    elif root.get("kubernetes", dict, None) is not None:
        root.fail("only placement: kubernetes reads this block (placement is local)", "kubernetes")
    watch = _parse_watch(root.child("search", required=False), model, check_paths)
    return Settings(source=source, model=model, video_input=video_input, db=db, kubernetes=kubernetes, watch=watch,
                    logs_dir=logs.read("path", *declared(Settings)["logs_dir"]), **values)


def _parse_watch(node: Node, model: ModelSettings, check_paths: bool) -> tuple[SavedSearch, ...]:
    """`search.watch`: checked here so that a query no run could embed (text without a
    text tower, a missing picture) fails at load, not once per video."""
    node.check_keys({"watch"})
    family, searches = FAMILIES[model.name], []
    for entry in node.items("watch", required=False):
        search = SavedSearch(**entry.read_keys(SavedSearch))
        name = search.name.strip()
        if not name or name in {s.name for s in searches}:
            entry.fail(f"{'a second' if name else 'an empty'} saved search named {name!r}", "name")
        if family.patch_grid:
            entry.fail(f"model {model.name} stores patch rows; saved searches score one vector per frame (CLIP)")
        if (search.text is None) == (search.image is None):
            entry.fail("give text or image, not both or neither")
        if search.text is not None and not search.text.strip():
            entry.fail("the text is empty", "text")
        if search.text is not None and not family.text_tower:
            entry.fail(f"model {model.name} has no text tower: watch with an image", "text")
        if search.image is not None and check_paths and not search.image.is_file():
            entry.fail(f"no such file: {search.image}", "image")
        searches.append(dataclasses.replace(search, name=name))
    return tuple(searches)


def _parse_kubernetes(node: Node, db: DbSettings) -> KubernetesSettings:
    kubernetes = KubernetesSettings(**node.read_keys(KubernetesSettings))
    if kubernetes.token_secret and not db.token_env:
        node.fail("names the Secret for db.token_env's variable, but db.token_env is not set", "token_secret")
    return kubernetes


def _parse_model(node: Node, check_paths: bool) -> ModelSettings:
    common = declared(ModelSettings)
    node.check_keys(set(common) | {key for family in FAMILIES.values() for key in family.options})
    name = node.read("name", *common["name"])
    family = FAMILIES[name]
    for key, value in node.data.items():
        if key not in common and key not in family.options and value is not None:
            node.fail(f"only {' or '.join(option_owners(key))} takes {key} (model.name is {name})", key)
    options = {key: node.read(key, option, option.kind) for key, option in family.options.items()}
    source, path = node.read("source", *common["source"]), node.read("path", *common["path"])
    if check_paths and source == "folder" and not Path(path).exists():
        node.fail(f"no such file or folder: {path} (see `feature-pipeline models --help`)", "path")
    values = {key: node.read(key, *common[key]) for key in ("features", "dtype", "batch_size")}
    model = ModelSettings(name=name, path=path, source=source, **values, **options)
    try:
        family.dimension(model)
    except LookupError as err:
        key, message = err.args
        node.fail(message, key)
    return model


def _parse_video_input(node: Node, check_paths: bool) -> VideoInput:
    values = node.read_keys(VideoInput)
    if check_paths and not values["path"].is_dir():
        node.fail(f"no such folder: {values['path']}", "path")
    values["extensions"] = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in values["extensions"])
    return VideoInput(**values)


def _parse_db(node: Node, model: ModelSettings) -> DbSettings:
    for secret in ("token", "password", "user"):
        if secret in node.data:
            node.fail("credentials never go in the file: name an environment variable in db.token_env", secret)
    values = node.read_keys(DbSettings)
    if values["uri"] is None:
        if not is_lite_file(values["name"]):
            node.fail(f"a Milvus Lite file name ends in .db, got {values['name']!r}", "name")
        values["uri"] = str(Path("db") / values["name"])
    values["lite_idle_minutes"] = values["lite_idle_minutes"] or None
    collections = node.items("collections")
    if len(collections) != len(model.features):
        node.fail(
            f"{len(collections)} collection(s) for {len(model.features)} feature(s) in model.features: "
            "give one collection per feature, in the same order",
            "collections",
        )
    return DbSettings(**values, collections=tuple(_parse_collection(c, model) for c in collections))


def _parse_collection(node: Node, model: ModelSettings) -> CollectionSpec:
    values = node.read_keys(CollectionSpec)
    fields = [_parse_field(f) for f in node.items("fields")]
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
    index = IndexSpec(**node.child("index", required=False).read_keys(IndexSpec))
    return CollectionSpec(values["name"], tuple(fields), index, values["partition_key"])


def _parse_field(node: Node) -> FieldSpec:
    spec = FieldSpec(**node.read_keys(FieldSpec))
    if spec.dtype == "VARCHAR" and spec.max_length is None:
        node.fail("VARCHAR fields need max_length", "max_length")
    if spec.dtype == VECTOR_DTYPE and spec.dim is None:
        node.fail(f"{VECTOR_DTYPE} fields need dim", "dim")
    return spec


# docs/configuration.md's reference, generated from the declarations above.

REFERENCE_START = ("<!-- The reference below is generated from core/settings.py: edit the declarations there, "
                   "then run\n"
                   "     python -m feature_pipeline_dagster.core.settings --reference docs/configuration.md -->")
REFERENCE_END = "<!-- end of the generated reference -->"


def with_reference(document: str) -> str:
    """`document` with the part between the reference's markers generated anew."""
    start, end = document.index(REFERENCE_START) + len(REFERENCE_START), document.index(REFERENCE_END)
    families = {f"model (name: {name})": list(family.options.items()) for name, family in FAMILIES.items()}
    return f"{document[:start]}\n\n{reference(Settings, families)}\n{document[end:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m feature_pipeline_dagster.core.settings")
    parser.add_argument("--reference", metavar="FILE", type=Path, required=True,
                        help="rewrite FILE's generated reference (docs/configuration.md) from the declared keys")
    path = parser.parse_args(argv).reference
    path.write_text(with_reference(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
