"""A generated set of near-duplicates for the duplicates tests and bench/bench_duplicates.py:
originals (`write_video`, one seed each), three variants of each made with PyAV (a byte copy
under another name, a re-encode at half the size and a low bitrate, a trim keeping 50-80 %
starting between two samples), and distinct videos of similar content (the same generator,
other seeds). Scored over pairs: precision and recall of the pairs the groups imply."""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass
from pathlib import Path

from feature_pipeline_dagster.core.samples import transcode, write_video


@dataclass(frozen=True)
class Trim:
    video: str
    original: str
    start_s: float  # where the trim starts in the original
    end_s: float


@dataclass
class DuplicateSet:
    families: list[list[str]]  # each original with its variants; distinct videos alone
    trims: list[Trim]

    @property
    def videos(self) -> list[str]:
        return [v for family in self.families for v in family]

    def true_pairs(self) -> set[tuple[str, str]]:
        return {tuple(sorted(p)) for family in self.families for p in itertools.combinations(family, 2)}


def write_duplicate_set(folder: Path, originals: int = 3, distinct: int = 3, seconds: float = 8.0,
                        first_seed: int = 0, detail: bool = True, trims_on_samples: bool = True) -> DuplicateSet:
    """`trims_on_samples`: trims start on a whole second, so at 1 fps their samples are the
    original's (False: 0.4 s past one, where the tests' random CLIP cannot match them)."""
    families, trims = [], []
    for i in range(originals):
        seed = first_seed + i
        name = f"orig_{seed:03d}.mp4"
        source = write_video(folder / name, seconds=seconds, seed=seed, detail=detail)
        copy = f"copies/renamed {seed:03d}.mp4"
        (folder / copy).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / copy)
        small = f"small/orig_{seed:03d}_160x120.mp4"
        transcode(source, folder / small, size=(160, 120), bit_rate=100_000)
        keep = 0.5 + 0.3 * (i % 4) / 3  # 50 %, 60 %, 70 %, 80 %
        start = float(int(seconds * (1 - keep) * ((i * 7) % 5) / 4 + 0.5)) + (0 if trims_on_samples else 0.4)
        start = min(start, round(seconds * (1 - keep), 1))
        end = start + keep * seconds
        trim = f"trims/orig_{seed:03d}_{start:g}-{end:g}s.mp4"
        transcode(source, folder / trim, start_s=start, end_s=end)
        families.append([name, copy, small, trim])
        trims.append(Trim(trim, name, start, end))
    for j in range(distinct):
        name = f"other_{first_seed + 500 + j:03d}.mp4"
        write_video(folder / name, seconds=seconds, seed=first_seed + 500 + j, detail=detail)
        families.append([name])
    return DuplicateSet(families, trims)


def pairs_of_groups(groups) -> set[tuple[str, str]]:
    return {tuple(sorted(p)) for g in groups for p in itertools.combinations(g.videos, 2)}


def precision_recall(found: set, truth: set) -> tuple[float, float]:
    hit = len(found & truth)
    return (hit / len(found) if found else 1.0), (hit / len(truth) if truth else 1.0)
