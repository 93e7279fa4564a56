"""What to decode from each video, as one value: `video_input`'s decoding keys, made once
from the config (`VideoInput.decode`) and passed whole to the decoder child and to the
search page. Passed as four loose parameters over nine hops, they drifted: the page planned
frames without `sampling` and showed, with `sampling: keyframes`, frames no run embedded."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class DecodeSpec:
    """Checked once, where the config is read (core/settings.py); nothing downstream checks again."""

    decoder: str = "auto"  # auto | decord | torchcodec | pyav | nvdec (decode/backends)
    sample_fps: float = 1.0
    max_frames: int | None = None
    sampling: str = "fps"  # fps | keyframes | nearest (decode/reader.py SamplingPlan)
    max_shift_ms: float | None = None  # nearest only; None: a quarter of the sample interval
    threads: int = 0  # FFmpeg threads per decoder (0: FFmpeg's); the engine's (lanes.decode_threads), not the config's

    @property
    def shift_ms(self) -> float:
        """`max_shift_ms` as `nearest` sampling reads it (its default resolved)."""
        return self.max_shift_ms if self.max_shift_ms is not None else 250.0 / self.sample_fps

    @property
    def in_process(self) -> bool:
        """nvdec decodes in the run's own process: its frames stay on the GPU for the model
        (a child process could hand them over only through host memory)."""
        return self.decoder == "nvdec"

    def on_cpu(self) -> DecodeSpec:
        """The same plan from a CPU decoder (every backend plans the same frames:
        test_decoder_parity.py), for readers such as the page that have no GPU to spare."""
        return replace(self, decoder="auto") if self.in_process else self
