"""Small synthetic H.264 videos (PyAV) for the quick start, tests and benchmarks:
moving shapes over a slowly changing background, so sampled frames differ. `detail`
adds texture and temporal noise and encodes with B-frames (libx264 `superfast`), as
camera footage is: flat frames decode several times faster than real ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_video(path: Path, seconds: float = 4.0, fps: int = 30, size: tuple[int, int] = (320, 240), seed: int = 0,
                faststart: bool = False, rotation: int = 0, detail: bool = False, gop: int | None = None,
                codec: str = "h264", audio: str | None = None) -> Path:
    """`faststart` puts the index before the data, as streaming files have it;
    `rotation` (degrees, counter-clockwise) is stored as the display matrix phones write;
    `gop`: a key frame every `gop` frames (default: the encoder's, 250 for libx264);
    `audio`: a 440 Hz tone in this codec ("aac"; "pcm_s16le" in .mov or .mkv) beside the video."""
    import av

    width, height = size
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, 3)
    velocity = rng.integers(2, 7, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "superfast" if detail else "ultrafast"}
        if gop:
            stream.codec_context.gop_size = gop
            stream.options = {**stream.options, "keyint_min": str(gop), "sc_threshold": "0"}
        texture = (rng.integers(0, 48, (height, width, 1)) if detail else 0)
        if rotation:
            stream.set_display_rotation(rotation)
        ys, xs = np.mgrid[0:height, 0:width]
        sound = container.add_stream(audio, rate=48000, layout="mono") if audio else None
        for i in range(max(1, int(seconds * fps))):
            frame = np.empty((height, width, 3), np.uint8)
            frame[:] = (base + i * np.array([1, 2, 3])) % 255
            frame[..., 1] = (frame[..., 1] + xs * 255 // width // 2).astype(np.uint8)
            cx, cy = (velocity * i) % np.array([width, height])
            frame[((xs - cx) ** 2 + (ys - cy) ** 2) < (min(size) // 6) ** 2] = (255, 255 - i % 255, 0)
            if detail:  # a fixed texture plus fresh grain each frame, like sensor noise
                grain = rng.integers(0, 16, (height, width, 1))
                frame = np.clip(frame.astype(np.int16) - 32 + texture + grain, 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            if sound:  # this frame's share of the tone
                first, last = (48000 * n // fps for n in (i, i + 1))
                tone = (np.sin(2 * np.pi * 440 * np.arange(first, last) / 48000) * 8000).astype(np.int16)
                samples = av.AudioFrame.from_ndarray(tone[None], format="s16", layout="mono")
                samples.sample_rate, samples.pts = 48000, first
                for packet in sound.encode(samples):
                    container.mux(packet)
        for encoder in (stream, sound) if sound else (stream,):
            for packet in encoder.encode():
                container.mux(packet)
    return path


def write_samples(folder: Path, count: int = 3, seconds: float = 6.0) -> list[Path]:
    return [write_video(folder / f"sample_{i:02d}.mp4", seconds=seconds, seed=i) for i in range(count)]


def transcode(source: Path, dest: Path, size: tuple[int, int] | None = None, bit_rate: int | None = None,
              start_s: float = 0.0, end_s: float | None = None) -> Path:
    """A re-encode of `source` (H.264): at another `size` and `bit_rate`, and/or trimmed to
    [start_s, end_s): the near-duplicates `feature-pipeline duplicates` finds."""
    from fractions import Fraction

    import av

    dest.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(source)) as src, av.open(str(dest), "w") as out:
        video = src.streams.video[0]
        rate = video.average_rate
        stream = out.add_stream("h264", rate=rate)
        stream.width, stream.height = size or (video.width, video.height)
        stream.pix_fmt = "yuv420p"
        if bit_rate:
            stream.bit_rate = bit_rate
        written = 0
        for frame in src.decode(video):
            if frame.time < start_s - 1e-6 or (end_s is not None and frame.time >= end_s - 1e-6):
                continue
            picture = frame.reformat(width=stream.width, height=stream.height, format="yuv420p")
            picture.pts, picture.time_base = written, Fraction(1, rate)  # the trim starts at 0
            written += 1
            for packet in stream.encode(picture):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return dest


def write_edited_video(path: Path, shots: list[float], dissolves: list[float], fps: int = 30,
                       size: tuple[int, int] = (320, 240), seed: int = 0) -> list[float]:
    """A video of `shots` (seconds each) of different generated scenes, each a panning
    texture with a moving disc and grain; between shot k and k+1 a hard cut
    (`dissolves[k]` 0) or a cross-fade of that many seconds centred on the boundary.
    Returns the boundaries' true times in seconds (the centre of each transition)."""
    import av

    width, height = size
    rng = np.random.default_rng(seed)
    scenes = [_scene(rng, width, height) for _ in shots]
    ends = np.cumsum(shots)
    truth = [float(t) for t in ends[:-1]]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(int(round(ends[-1] * fps))):
            t = (i + 0.5) / fps
            k = min(int(np.searchsorted(ends, t, side="right")), len(shots) - 1)
            frame = scenes[k](i, rng).astype(np.float32)
            for b, boundary in enumerate(truth):  # inside a cross-fade: blend with the other side
                half = dissolves[b] / 2
                if half and abs(t - boundary) < half:
                    alpha = (t - boundary + half) / (2 * half)  # 0: all shot b, 1: all shot b+1
                    other = scenes[b + 1 if k == b else b](i, rng).astype(np.float32)
                    mine, theirs = (1 - alpha, alpha) if k == b else (alpha, 1 - alpha)
                    frame = mine * frame + theirs * other
            image = np.clip(frame, 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return truth


def _scene(rng: np.random.Generator, width: int, height: int):
    """One shot's content as a function of the frame number: a colour field around the shot's
    own colour with a
    fixed fine texture, panned by the camera, a disc crossing it, fresh grain each frame."""
    cells = np.clip(rng.integers(40, 216, 3) + rng.integers(-50, 50, (4, 5, 3)), 0, 255).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width]
    field = cells[ys * 4 // height, xs * 5 // width]
    field = (field + np.roll(field, width // 10, axis=1) + np.roll(field, height // 8, axis=0)) / 3  # softer edges
    field += rng.integers(-24, 24, (height, width, 1))
    pan = rng.uniform(-1.5, 1.5, 2)  # pixels per frame: up to 45 px (14 % of the width) a second
    disc_colour = rng.integers(0, 256, 3)
    start, velocity = rng.uniform(0, 1, 2) * (width, height), rng.uniform(-3, 3, 2)
    radius = min(width, height) // 7

    def frame(i: int, noise: np.random.Generator) -> np.ndarray:
        dy, dx = (pan * i).astype(int)
        image = np.roll(field, (dy, dx), axis=(0, 1)).copy()
        cx, cy = (start + velocity * i) % (width, height)
        image[((xs - cx) ** 2 + (ys - cy) ** 2) < radius ** 2] = disc_colour
        return image + noise.integers(-8, 8, (height, width, 1))

    return frame
