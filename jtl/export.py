"""``python -m jtl.export --workdir DIR --format hf|npz|peft [--out DIR] [--config X.py[:arg]] [--config.key=value]``.

Writes a finished ``python -m jtl.train`` run's final weights (its latest checkpoint) in another library's format:
``hf`` a Hugging Face checkpoint in the layout of ``config.model.pretrained`` and ``npz`` a big_vision ``.npz``
(ViT), both with any adapters merged; ``peft`` the run's LoRA, DoRA or (IA)^3 adapters and head, unmerged, as a
Hugging Face PEFT adapter for ``config.model.pretrained``. The run's config is the one it recorded
(``DIR/config.json``) unless ``--config`` names another; ``--config.key=value`` changes either. A format is one
function in ``FORMATS``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jtl.adapters import DoRASpec, IA3Spec, LoRASpec, base_model, merge_adapters, save_peft
from jtl.config import CONFIG_FILE, ConfigError, apply_overrides, config_from_args, config_from_json
from jtl.train import build_model, run_command
from jtl.weights import WeightLoadError, export, fields_equal, get_layout, save_hf_pretrained


def final_model(config: ml_collections.ConfigDict, workdir: str | Path) -> tuple[Any, dict[str, Any]]:
    """The model of a run and its latest checkpoint's variables, as trained: a model with adapters stays wrapped
    (:func:`jtl.adapters.with_adapters`) and its adapters separate.

    Args:
      config: the run's config.
      workdir: the run's workdir.

    Returns:
      ``(model, {"params": ..., "batch_stats": ...})`` as host arrays.

    Raises:
      ConfigError: when the workdir holds no checkpoint.

    >>> from jtl.config import base_config
    >>> final_model(base_config(), "/no/such/workdir")
    Traceback (most recent call last):
    ...
    jtl.config.ConfigError: /no/such/workdir/checkpoints: no checkpoint to export
    """
    directory = Path(workdir).absolute() / "checkpoints"
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no checkpoint to export")
    with ocp.CheckpointManager(directory) as manager:
        step = manager.latest_step()
        if step is None:
            raise ConfigError(f"{directory}: no checkpoint to export")
        described = manager.restore(step, args=ocp.args.Composite(model=ocp.args.JsonRestore()))["model"]
        # Restored without a target: the train state as saved, of which only the model's variables are needed.
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    model, _, _ = build_model(config, int(described["model"]["num_classes"]))
    return model, {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}


def _merged(model: Any, variables: dict) -> tuple[Any, dict]:
    """The base model, its adapters folded into its weights: what formats without adapters hold."""
    if not hasattr(model, "adapters"):
        return model, variables
    return base_model(model), {**variables, "params": merge_adapters(variables["params"], *model.adapters)}


def _pretrained(config: ml_collections.ConfigDict, format: str) -> str:
    if not config.model.pretrained:
        raise ConfigError(
            f"--format {format}: the run did not start from a Hugging Face checkpoint (config.model.pretrained)"
        )
    return config.model.pretrained


def _hf(out: Path, model: Any, variables: dict, config: ml_collections.ConfigDict) -> Path:
    return save_hf_pretrained(out, *_merged(model, variables), _pretrained(config, "hf"))


def _peft(out: Path, model: Any, variables: dict, config: ml_collections.ConfigDict) -> Path:
    source = _pretrained(config, "peft")
    if not any(isinstance(m, LoRASpec | DoRASpec | IA3Spec) for m in getattr(model, "adapters", ())):
        raise ConfigError(
            "--format peft: the run trained no LoRA, DoRA or (IA)^3 adapters (config.lora.rank, config.lora.dora, "
            "config.ia3.targets); export its weights with --format hf"
        )
    return save_peft(out, model, variables["params"], source)


def _npz(out: Path, model: Any, variables: dict, config: ml_collections.ConfigDict) -> Path:
    del config
    model, variables = _merged(model, variables)
    layout = get_layout("big_vision-vit")
    state = export({"params": variables["params"]}, layout, {"num_heads": model.num_heads})
    # big_vision's format records no activation or norm epsilon: its loader assumes big_vision's own, so a
    # model with others (a Hugging Face ViT's exact GELU) would load back computing something else.
    wrong = [
        f"{name}: the model has {getattr(model, name)!r}, the .npz would load with {value!r}"
        for name, value in layout.fields({}, state).items()
        if not fields_equal(getattr(model, name), value)
    ]
    if wrong:
        raise WeightLoadError("--format npz: the export would not load back as this model: " + "; ".join(wrong))
    out.mkdir(parents=True, exist_ok=True)
    path, staging = out / "model.npz", out / ".model.partial.npz"
    try:
        np.savez(staging, **state)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


# name -> write(out directory, model, variables, config) -> what was written; the model and variables as trained
# (adapters unmerged, see final_model).
FORMATS: dict[str, Callable[[Path, Any, dict, ml_collections.ConfigDict], Path]] = {
    "hf": _hf,
    "npz": _npz,
    "peft": _peft,
}


def main(argv: list[str] | None = None) -> Path:
    """``python -m jtl.export``: parses the command line and writes the export.

    Args:
      argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
      What was written.

    A workdir that recorded no config (and no ``--config``), or a config that does not load, exits with status 2
    and a message naming it:

    >>> main(["--workdir", "/no/such/workdir", "--format", "hf"])
    Traceback (most recent call last):
    ...
    SystemExit: 2
    """
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m jtl.export", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="the finished run")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="what to write")
    parser.add_argument("--out", default=None, help="where (default: WORKDIR/export-FORMAT)")
    parser.add_argument("--config", default=None, help=f"path/to/config.py[:arg] (default: WORKDIR/{CONFIG_FILE})")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or JTL_DEBUG=1)")
    args, rest = parser.parse_known_args([a for a in argv if not a.startswith("--config.")])
    if rest:
        parser.error(f"unrecognised arguments: {rest}")
    overrides = [a for a in argv if a.startswith("--config.")]
    recorded = Path(args.workdir) / CONFIG_FILE
    try:
        if args.config:
            config = config_from_args(args.config, overrides)
        elif recorded.is_file():
            config = apply_overrides(config_from_json(recorded.read_text()), overrides)
        else:
            raise ConfigError(f"{recorded}: no such file (a run records it when it starts); name the run's --config")
    except ConfigError as e:
        parser.exit(2, f"error: {e}\n")
    out = Path(args.out or Path(args.workdir) / f"export-{args.format}")

    def write() -> Path:
        model, variables = final_model(config, args.workdir)
        return FORMATS[args.format](out, model, variables, config)

    return run_command(parser, args.debug, write)


if __name__ == "__main__":
    main()
