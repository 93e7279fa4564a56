"""Search over the stored embeddings, Dagster-free: a text or image query into moments of
videos (the API a notebook, the CLI and the page share).

    from feature_pipeline_dagster.core.search import search
    result = search(load_settings("config/clip-config.yaml"), text="a red car at night", k=5)
    for m in result.moments:
        print(m.video_path, m.start_s, m.end_s, m.best_s, m.score)

`api.py` runs a query against the store; `query.py` turns text and images into vectors
through the model's own path; `moments.py` groups hits into moments (by shot or by gap); `patches.py` scores
NaViT frames patch by patch (MaxSim).
"""

from feature_pipeline_dagster.core.search.api import SearchResult, search
from feature_pipeline_dagster.core.search.moments import (
    DEFAULT_GAP_S, Hit, Moment, PatchMatch, Shot, group_by_shot, merge_hits)

__all__ = ["DEFAULT_GAP_S", "Hit", "Moment", "PatchMatch", "SearchResult", "Shot", "group_by_shot", "merge_hits",
           "search"]
