"""`tokenomy.distill`: a smaller model made from the user's own. `prune` drops the
transformer blocks whose removal costs least (measured KLD against the teacher); `train`
recovers the student by offline logit distillation on the teacher's cached top-k
log-probabilities (or plain cross entropy, as a baseline)."""

from tokenomy.distill.manifest import DistillManifest
from tokenomy.distill.prune import PruneConfig, prune

__all__ = ["DistillManifest", "PruneConfig", "prune"]
