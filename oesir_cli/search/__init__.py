"""`oesir search`: rank indexed photos as possible sources (host, donors) of a query photo.

Two kinds of evidence, each computed exactly over the whole index:

* objects (the paper's Eq. 7): D(q, d) = min over object pairs of the squared
  L2 distance between whitened object embeddings;
* local features: every RootSIFT keypoint of the query votes for the photos of
  its nearest stored keypoints.

The default ranking ("fused") puts the host first, queries the region the host
does not explain on its own, and ranks donors by that evidence; `Mode.OBJECTS`
is the paper's method alone. Modules: `evidence` (per-photo evidence), `host`,
`region`, `fusion` (pure ranking), `params` (every tuned constant),
`searcher` (runs the stages).
"""

from .evidence import IndexedPhotos, ObjectDistances, QueryEvidence, Votes
from .fusion import DonorEvidence, Ranking, fused_ranking, object_ranking, vote_ranking
from .params import DEFAULT_PARAMS, RankingParams
from .searcher import Match, Searcher, SearchResult

__all__ = [
    "DEFAULT_PARAMS",
    "DonorEvidence",
    "IndexedPhotos",
    "Match",
    "ObjectDistances",
    "QueryEvidence",
    "Ranking",
    "RankingParams",
    "SearchResult",
    "Searcher",
    "Votes",
    "fused_ranking",
    "object_ranking",
    "vote_ranking",
]
