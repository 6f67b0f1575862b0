"""Every analysis kind a job file can name, by name: the one list to extend with a new kind."""

from __future__ import annotations

from cnnzoo.interpret.jobs.analysis import Analysis
from cnnzoo.interpret.jobs.kinds.activation_maximisation import ActivationMaximisation
from cnnzoo.interpret.jobs.kinds.attributions import Attributions
from cnnzoo.interpret.jobs.kinds.evolution import Evolution
from cnnzoo.interpret.jobs.kinds.explanation_quality import ExplanationQuality
from cnnzoo.interpret.jobs.kinds.filters import Filters
from cnnzoo.interpret.jobs.kinds.max_activations import MaxActivations
from cnnzoo.interpret.jobs.kinds.occlusion import Occlusion
from cnnzoo.interpret.jobs.kinds.randomisation import Randomisation

__all__ = ["KINDS"]

KINDS: dict[str, type[Analysis]] = {
    cls.kind: cls
    for cls in (
        MaxActivations,
        Filters,
        Evolution,
        Attributions,
        Occlusion,
        Randomisation,
        ActivationMaximisation,
        ExplanationQuality,
    )
}
