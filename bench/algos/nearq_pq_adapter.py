"""nearq PQ configurations with an A/B switch: ``pq_fastscan=False`` sets
``NEARQ_PQ_FASTSCAN=0`` before nearq is first used, so 4-bit PQ graph traversal scores
neighbours one code at a time with the float LUT (the path before FastScan traversal) instead
of gathering them into FastScan blocks. Each configuration runs in its own process."""
import os

from .nearq_adapter import NearQ


class NearQPq(NearQ):
    def fit(self, X, build_threads):
        if self.params.get("pq_fastscan") is False:
            os.environ["NEARQ_PQ_FASTSCAN"] = "0"
        super().fit(X, build_threads)
