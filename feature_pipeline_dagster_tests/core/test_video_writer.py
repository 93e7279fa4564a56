"""One video into its collection: out of device memory, the batch halves until it fits."""

import pytest
import torch

from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.errors import DeviceMemoryError
from feature_pipeline_dagster.core.models import load_extractor
from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster.core.store import store_for
from feature_pipeline_dagster.core.engine.run import RunReport, embed_videos


class TightDevice:
    """The real extractor on a device that has room for at most `fits` frames at once
    (CUDA is not here to run out of memory for real; torch's own error is raised)."""

    def __init__(self, extractor, fits: int):
        self.extractor, self.fits, self.seen = extractor, fits, []

    def __getattr__(self, name):
        return getattr(self.extractor, name)

    def embed(self, batch):
        self.seen.append(len(batch))
        if len(batch) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.extractor.embed(batch)


@pytest.fixture
def setup(project):
    write_video(project.videos / "a.mp4", seconds=9)
    settings = load_settings(project.config)
    store = store_for(settings.db)
    yield settings, settings.db.collections[0], store, load_extractor(settings.model, "cpu")
    store.close()


def test_out_of_memory_halves_the_batch_until_it_fits(setup):
    settings, spec, store, extractor = setup
    tight = TightDevice(extractor, fits=1)
    meta = embed_videos(settings, spec, store, tight, ["a.mp4"], RunReport(), lanes=1).written["a.mp4"]
    assert settings.model.batch_size == 4 and meta["batch_size"] == 1
    assert meta["rows"] == 9 and store.count_rows(spec, "a.mp4") == 9
    assert tight.seen[0] == 4 and 2 in tight.seen


def test_out_of_memory_at_one_frame_is_a_retryable_error(setup):
    settings, spec, store, extractor = setup
    with pytest.raises(DeviceMemoryError, match="out of memory on cpu even one frame at a time") as err:
        embed_videos(settings, spec, store, TightDevice(extractor, fits=0), ["a.mp4"], RunReport(), lanes=1)
    assert err.value.retryable and store.count_rows(spec, "a.mp4") == 0
