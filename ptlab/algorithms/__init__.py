"""Post-training algorithms as rules for per-token weights (see docs/design.md, section 2).

Each file holds one algorithm; conf/algorithm/<name>.yaml names its class. The registry of algorithms
is the config group: there is no name -> class table here. Inside the policy-gradient class, the parts
a config chooses by name are registered units: policy losses (policy_losses/, one file each) and
baselines (advantages.py), as verl registers its policy losses and advantage estimators.
"""
from ptlab.algorithms.base import Algorithm, aggregate

__all__ = ["Algorithm", "aggregate"]
