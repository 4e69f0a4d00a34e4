"""The objectives' registry and the settings each objective refuses, named in one error."""

import pytest

from jtl import objectives
from jtl.config import ConfigError, base_config, task_config


def test_an_unknown_objective_lists_the_known_ones():
    config = base_config()
    config.objective = "segmentation"
    with pytest.raises(
        ConfigError, match=r"config.objective='segmentation'; known: adaptation, classification, detection, multitask"
    ):
        objectives.from_config(config)


def test_domain_adaptation_refuses_single_task_settings_naming_each():
    config = base_config()
    config.target.source, config.mixup_alpha, config.baseline.scratch = "digits", 0.2, True
    with pytest.raises(ConfigError, match=r"^config.mixup_alpha=0.2, config.baseline.scratch=True: single-task"):
        objectives.from_config(config)


def test_multitask_refuses_single_task_settings_naming_each():
    config = base_config()
    config.tasks = {"digit": task_config()}
    config.transferability = True
    with pytest.raises(ConfigError, match=r"^config.transferability=True: single-task training only, not with config"):
        objectives.from_config(config)
