"""``python -m jtl.export``: a few steps of ``jtl.train`` on a tiny Hugging Face ViT, exported from the workdir
alone, load back (in transformers, PEFT, or jtl's big_vision loader) with the trained model's logits."""

import contextlib
import io
import json
import shutil

import numpy as np
import pytest

from jtl.config import CONFIG_FILE, base_config, config_from_json, load_config
from jtl.export import main
from jtl.train import build_model, train_and_evaluate
from jtl.weights import load_pretrained
from tests.parity import TOL, jit_apply, max_abs, nhwc

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _run(workdir, pretrained="", **changes):
    """Three steps on digits 0-2 (a checkpoint at the end), from ``pretrained`` or a scratch ``vit-digits``."""
    config = base_config()
    config.model.name, config.model.pretrained, config.num_classes, config.data.classes = (
        "vit-digits",
        str(pretrained),
        3,
        (0, 1, 2),
    )
    config.total_steps, config.batch_size, config.eval_batch_size, config.log_every = 3, 8, 8, 1
    config.compilation_cache = ""
    for key, value in changes.items():
        node, _, leaf = key.rpartition(".")
        setattr(config.get(node) if node else config, leaf, value)  # only top-level and one-dot keys here
    config.lock()
    with contextlib.redirect_stdout(io.StringIO()):
        result = train_and_evaluate(config, workdir)
    model, _, _ = build_model(config, 3)
    return model, {"params": result["params"], "batch_stats": result["batch_stats"]}


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory):
    """A tiny random Hugging Face ViT base model for the 8x8 grey digits."""
    path = tmp_path_factory.mktemp("vit")
    hf = transformers.ViTConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=8,
        patch_size=2,
        num_channels=1,
    )
    torch.manual_seed(0)
    transformers.ViTModel(hf, add_pooling_layer=False).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def runs(hf_vit, tmp_path_factory):
    """LoRA rank -> (workdir, model, variables) of a run from ``hf_vit``, each trained once for the tests here."""
    done = {}

    def get(lora):
        if lora not in done:
            workdir = tmp_path_factory.mktemp(f"lora{lora}") / "run"
            done[lora] = (workdir, *_run(workdir, hf_vit, **{"lora.rank": lora}))
        return done[lora]

    return get


def _pixels():
    return torch.tensor(np.random.default_rng(0).normal(size=(2, 1, 8, 8)), dtype=torch.float32)


@pytest.mark.parametrize("lora", [0, 2])
def test_hf_export_from_the_workdir_alone(runs, lora):
    workdir, model, variables = runs(lora)
    assert config_from_json((workdir / CONFIG_FILE).read_text()).lora.rank == lora
    out = main(["--workdir", str(workdir), "--format", "hf"])
    assert out == workdir / "export-hf"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    reference = transformers.AutoModelForImageClassification.from_pretrained(out).eval()
    assert type(reference).__name__ == "ViTForImageClassification" and reference.config.num_labels == 3
    with torch.no_grad():
        theirs = reference(pixel_values=_pixels()).logits.numpy()
    ours = jit_apply(model, variables, nhwc(_pixels()))  # with LoRA: the unmerged adapters
    assert max_abs(ours, theirs) < TOL
    assert max_abs(ours, np.zeros_like(ours)) > 10 * TOL  # the trained head is not the zero-initialised one


def test_peft_export_loads_in_peft_with_the_runs_logits(runs, hf_vit):
    workdir, model, variables = runs(2)
    out = main(["--workdir", str(workdir), "--format", "peft"])
    assert out == workdir / "export-peft"
    peft = pytest.importorskip("peft")
    base = transformers.ViTForImageClassification.from_pretrained(hf_vit, num_labels=3)
    loaded = peft.PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        theirs = loaded(pixel_values=_pixels()).logits.numpy()
    assert max_abs(jit_apply(model, variables, nhwc(_pixels())), theirs) < TOL


def test_peft_export_of_a_run_without_adapters_is_refused(runs, capsys):
    workdir, _, _ = runs(0)
    with pytest.raises(SystemExit, match="2"):
        main(["--workdir", str(workdir), "--format", "peft"])
    assert "--format peft: the run trained no LoRA, DoRA or (IA)^3 adapters" in capsys.readouterr().err
    assert not (workdir / "export-peft").exists()


def test_npz_export_loads_back_with_the_big_vision_loader(tmp_path):
    big_vision = {"gelu_approximate": True, "layer_norm_eps": 1e-6}  # what the .npz loader assumes
    model, variables = _run(tmp_path / "run", **{"model.overrides": big_vision})
    out = main(["--workdir", str(tmp_path / "run"), "--format", "npz", "--out", str(tmp_path / "npz")])
    assert out == tmp_path / "npz" / "model.npz"
    loaded, reloaded, report = load_pretrained(out, verbose=False)
    assert not report.missing and not report.unexpected
    images = nhwc(_pixels())
    assert max_abs(jit_apply(loaded, reloaded, images), jit_apply(model, variables, images)) == 0.0


def test_npz_export_of_a_hugging_face_vit_says_what_it_cannot_hold(runs, capsys):
    workdir, _, _ = runs(0)
    with pytest.raises(SystemExit, match="2"):
        main(["--workdir", str(workdir), "--format", "npz"])
    error = capsys.readouterr().err
    assert "gelu_approximate: the model has False, the .npz would load with True" in error
    assert "layer_norm_eps: the model has 1e-12, the .npz would load with 1e-06" in error
    assert not (workdir / "export-npz").exists()  # nothing written


def test_config_overrides_change_the_recorded_one(runs, hf_vit, tmp_path, capsys):
    run, _, _ = runs(0)
    assert json.loads((run / CONFIG_FILE).read_text())["model"]["pretrained"] == str(hf_vit)
    moved = shutil.copytree(hf_vit, tmp_path / "moved")  # the source checkpoint, somewhere else now
    workdir = ["--workdir", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]
    out = main([*workdir, f"--config.model.pretrained={moved}"])
    assert transformers.AutoModelForImageClassification.from_pretrained(out).config.num_labels == 3
    with pytest.raises(SystemExit, match="2"):
        main([*workdir, "--config.model.pretrained=/no/such/dir"])
    assert "/no/such/dir" in capsys.readouterr().err


def test_a_workdir_without_a_recorded_config_needs_config(tmp_path, capsys):
    with pytest.raises(SystemExit, match="2"):
        main(["--workdir", str(tmp_path), "--format", "hf"])
    assert f"{tmp_path / CONFIG_FILE}: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["configs/quickstart.py:lora", "configs/quickstart.py:lpft", "configs/multitask.py"])
def test_shipped_configs_read_back_equal(spec, tmp_path):
    from jtl.config import save_config

    config = load_config(spec)
    assert config_from_json(save_config(config, tmp_path).read_text()) == config
