import numpy as np
import pytest
import torch

from feature_pipeline_dagster.core.decode.spec import DecodeSpec
from feature_pipeline_dagster.core.settings import ModelSettings
from feature_pipeline_dagster.core.errors import ModelError
from feature_pipeline_dagster.core.decode.reader import VideoReader
from feature_pipeline_dagster.core.models import load_extractor
from feature_pipeline_dagster.core.models.clip.model import create_open_clip, quick_gelu_for
from feature_pipeline_dagster.core.models.clip.weights import make_random
from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster_tests.conftest import TINY_CLIP


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Decoded frames of several sizes and aspect ratios, as the pipeline sees them."""
    folder = tmp_path_factory.mktemp("sizes")
    out = []
    for size in [(320, 240), (640, 360), (200, 300), (224, 224)]:
        reader = VideoReader(write_video(folder / f"{size[0]}x{size[1]}.mp4", seconds=4, size=size, seed=size[0]))
        out += [b.frames for b in reader.batches(reader.plan(DecodeSpec()), 8)]
    return out


def test_vectors_match_open_clip_reference(tiny_clip, frames):
    """Our batched tensor preprocessing + model vs open_clip's own PIL preprocess."""
    import open_clip
    from PIL import Image

    from feature_pipeline_dagster.core.batches import FrameBatch

    extractor = load_extractor(ModelSettings(name="CLIP", path=str(tiny_clip), source="folder"), "cpu")
    reference, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_clip}")
    reference.eval()
    cosines = []
    for batch in frames:
        ours = extractor.embed(FrameBatch(batch, np.arange(len(batch)), np.zeros(len(batch), np.int64))).vectors
        with torch.no_grad():
            ref = reference.encode_image(torch.stack([preprocess(Image.fromarray(f)) for f in batch]))
        ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
        cosines += (ours * ref).sum(axis=1).tolist()
        assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    print(f"min cosine vs open_clip reference over {len(cosines)} frames: {min(cosines):.7f}")
    assert min(cosines) >= 0.9999


def test_quick_gelu_follows_the_weights():
    assert quick_gelu_for(ModelSettings(name="CLIP", arch="ViT-B-32", path="openai")) is True
    assert quick_gelu_for(ModelSettings(name="CLIP", arch="ViT-B-32", path="laion2b_s34b_b79k")) is False
    assert quick_gelu_for(ModelSettings(name="CLIP", arch="ViT-B-32", path="openai", quick_gelu=False)) is False
    with pytest.raises(ModelError, match="not a pretrained tag of ViT-B-32"):
        quick_gelu_for(ModelSettings(name="CLIP", arch="ViT-B-32", path="no-such-tag"))


def test_folder_records_quick_gelu(tmp_path):
    from open_clip.transformer import QuickGELU

    folder = make_random(ModelSettings(name="CLIP", path=str(tmp_path), source="folder"), tmp_path,
                         {**TINY_CLIP, "quick_gelu": True})
    model = create_open_clip(ModelSettings(name="CLIP", path=str(folder), source="folder"))
    assert any(isinstance(m, QuickGELU) for m in model.visual.modules())


class _Payload:
    """Unpickling this would run `touch`: what a malicious weights file does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_weights_file_is_loaded_without_pickle(tmp_path, tiny_clip):
    """A .pt whose pickle would run code when loaded is refused, and the code never runs:
    loading goes through torch's weights-only unpickler, never plain pickle. (Written with
    torch's own pickle protocol, 2, so torch has nothing to warn about but the refusal.)"""
    import pickle
    import warnings

    marker = tmp_path / "pwned"
    evil = tmp_path / "weights.pt"
    evil.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}, protocol=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ModelError, match="cannot load CLIP .*[Ww]eights only load failed"):
            create_open_clip(ModelSettings(name="CLIP", path=str(evil), source="folder"))
    assert not marker.exists()  # the payload never ran
    assert not [w for w in caught if "pickle" in str(w.message).lower()], [str(w.message) for w in caught]


def test_unknown_cuda_device_is_a_clear_error(tiny_clip):
    with pytest.raises(ModelError, match="device cuda:7"):
        load_extractor(ModelSettings(name="CLIP", path=str(tiny_clip), source="folder"), "cuda:7")


def test_declared_row_fields_are_the_columns_embed_emits(tiny_clip, frames):
    """The registry holds CLIP to its declaration, and refuses a declaration that differs."""
    import dataclasses

    from feature_pipeline_dagster.core.batches import FrameBatch
    from feature_pipeline_dagster.core.models import FAMILIES

    extractor = load_extractor(ModelSettings(name="CLIP", path=str(tiny_clip), source="folder"), "cpu")
    rows = extractor.embed(FrameBatch(frames[0][:2], np.arange(2), np.zeros(2, np.int64)))
    FAMILIES["CLIP"].check_columns(rows)
    wrong = dataclasses.replace(FAMILIES["CLIP"], row_fields=("frame_id", "timestamp_ms", "row_idx"))
    with pytest.raises(ModelError, match=r"emitted columns \['frame_id', 'timestamp_ms'\] but declares"):
        wrong.check_columns(rows)


def test_loading_leaves_the_process_logging_as_it_was(tiny_clip):
    """open_clip's `logging.info()` calls install a root handler as a side effect; after a
    load (model and text tokenizer) a warning of any library still prints as its bare
    message, not as `WARNING:name:message` (a search printed its random-weights warning so)."""
    import subprocess
    import sys
    import textwrap

    program = textwrap.dedent("""
        import logging, sys
        from feature_pipeline_dagster.core.models.clip.text import load_text
        from feature_pipeline_dagster.core.settings import ModelSettings

        load_text(ModelSettings(name="CLIP", path=sys.argv[1], source="folder"), "cpu")
        assert logging.getLogger().handlers == [], logging.getLogger().handlers
        logging.getLogger("some.library").warning("a warning")
    """)
    done = subprocess.run([sys.executable, "-c", program, str(tiny_clip)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == "a warning"
    assert not [line for line in done.stderr.splitlines() if line.startswith("WARNING:")], done.stderr


def test_weights_load_exactly_as_open_clip_loads_them(tiny_clip):
    """Built without the random init (the weights overwrite it), from safetensors straight
    to the device: every tensor equal to open_clip's own load of the folder."""
    import open_clip

    reference = open_clip.create_model(f"local-dir:{tiny_clip}").state_dict()
    fast = create_open_clip(ModelSettings(name="CLIP", path=str(tiny_clip), source="folder")).state_dict()
    assert reference.keys() == fast.keys()
    assert all(torch.equal(reference[k], fast[k]) for k in reference)


LOADS_WITHOUT = """
import sys
from feature_pipeline_dagster.core.models import load_extractor
from feature_pipeline_dagster.core.settings import ModelSettings
load_extractor(ModelSettings(name="CLIP", path=sys.argv[1], source="folder"), "cpu")
print(sorted(m for m in ("transformers", "timm", "torch._dynamo", "torch._dynamo.utils") if m in sys.modules))
import torch._dynamo.utils  # whoever needs it later gets the real one
roi_align = sys.modules["torchvision.ops.roi_align"]
print(roi_align.is_compile_supported("cpu") == torch._dynamo.utils.is_compile_supported("cpu"))
"""


def test_a_plain_clip_loads_without_importing_transformers_timm_or_dynamo(tiny_clip):
    """open_clip's package init imports transformers and timm (guarded, optional: 0.8 s of
    CPU of its 4.4 s), and through torchvision.ops torch._dynamo (0.9 s of its 1.3 s now),
    which then comes whole and real on first use."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", LOADS_WITHOUT, str(tiny_clip)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[]", "True"]


def test_resize_is_torchvisions_v2_resize_pixel_for_pixel():
    """The preprocessing's resize (on torch's op, without torchvision's v2 module and the
    torch._dynamo import it brings) gives torchvision v2's uint8 frames exactly."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    from feature_pipeline_dagster.core.models.clip.model import resize_uint8

    rng = np.random.default_rng(0)
    for height, width in [(240, 320), (333, 211), (224, 224), (97, 53)]:
        x = torch.from_numpy(rng.integers(0, 256, (2, 3, height, width), dtype=np.uint8))
        for bicubic in (True, False):
            mode = InterpolationMode.BICUBIC if bicubic else InterpolationMode.BILINEAR
            for size in [(224, 224), (96, 160)]:
                assert torch.equal(resize_uint8(x, size, bicubic), F.resize(x, list(size), interpolation=mode))


LOADS = """
import sys
from feature_pipeline_dagster.core.models import load_extractor
from feature_pipeline_dagster.core.settings import ModelSettings
load_extractor(ModelSettings(name="CLIP", path=sys.argv[1], source="folder"), "cpu")
"""


@pytest.mark.parametrize("exported, shown", [(None, "GOMP_SPINCOUNT = '0'"), ("ACTIVE", "OMP_WAIT_POLICY = 'ACTIVE'")])
def test_torchs_openmp_threads_sleep_between_regions_unless_told_otherwise(tiny_clip, exported, shown):
    """Spinning OpenMP threads took the cores the decoders beside the model need
    (core/models/__init__.py). libgomp prints what it read as torch loads
    (`OMP_DISPLAY_ENV=verbose`; left unset, it spins 300000 times before it sleeps); a
    policy the environment exports is kept."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | {"OMP_DISPLAY_ENV": "verbose"}
    if exported:
        env["OMP_WAIT_POLICY"] = exported
    out = subprocess.run([sys.executable, "-c", LOADS, str(tiny_clip)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert shown in out.stderr
