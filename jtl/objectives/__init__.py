"""What a run optimises: the :class:`Objective` interface, the registry that ``config.objective`` reads, and
the objectives jtl ships (classification, domain adaptation, multi-task learning on a shared backbone, object
detection)."""

from jtl.objectives import adaptation, classification, detection, multitask
from jtl.objectives._base import (
    Load,
    Objective,
    Stream,
    Sums,
    available,
    check_unset,
    from_config,
    register,
    unregister,
)
from jtl.objectives.adaptation import DomainAdaptation
from jtl.objectives.classification import Classification
from jtl.objectives.detection import Detection
from jtl.objectives.multitask import MultiTask, Task, Weighting

register("classification", classification.from_config)
register("adaptation", adaptation.from_config)
register("multitask", multitask.from_config)
register("detection", detection.from_config)

__all__ = [
    "Classification",
    "Detection",
    "DomainAdaptation",
    "Load",
    "MultiTask",
    "Objective",
    "Stream",
    "Sums",
    "Task",
    "Weighting",
    "adaptation",
    "available",
    "check_unset",
    "classification",
    "detection",
    "from_config",
    "multitask",
    "register",
    "unregister",
]
