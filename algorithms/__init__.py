"""Post-training algorithms as rules for per-token weights (see docs/design.md, section 2).

Each file holds one algorithm; conf/algorithm/<name>.yaml names its class. The registry is the
config group: there is no name -> class table here.
"""
from algorithms.base import Algorithm, aggregate

__all__ = ["Algorithm", "aggregate"]
