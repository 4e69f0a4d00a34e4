"""ResNet and VGG parity: Hugging Face's ResNet, and torchvision-layout references written here with torch.nn
(keyed exactly as torchvision names its state dicts; torchvision itself cannot be installed here)."""

import jax.numpy as jnp
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

from jtl.weights import load_pretrained  # noqa: E402
from tests.parity import TOL, jit_apply, max_abs  # noqa: E402


def _nhwc(x):
    return jnp.asarray(x.numpy().transpose(0, 2, 3, 1))


def _randomise_batch_norm(model, seed):
    """Non-trivial running statistics, so eval-mode BatchNorm really uses them."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 1.0)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) * 0.5 + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator) * 0.1)


@pytest.mark.parametrize(
    "layer_type, hidden_sizes, depths",
    [("basic", [8, 16, 32], [1, 2, 1]), ("bottleneck", [16, 32], [2, 2])],
)
def test_hf_resnet_layer_by_layer(layer_type, hidden_sizes, depths, tmp_path):
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=hidden_sizes, depths=depths, layer_type=layer_type, num_labels=4
    )
    torch.manual_seed(0)
    reference = transformers.ResNetForImageClassification(config).eval()
    with torch.no_grad():
        _randomise_batch_norm(reference, 1)
    reference.save_pretrained(tmp_path)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True)

    model, variables, report = load_pretrained(tmp_path, verbose=False)
    assert not report.missing and not report.unexpected and "batch_stats" in variables
    logits, state = jit_apply(model, variables, _nhwc(pixels), mutable=["intermediates"])
    hidden = state["intermediates"]["hidden_states"]
    assert len(hidden) == len(expected.hidden_states)
    for i, (ours, theirs) in enumerate(zip(hidden, expected.hidden_states, strict=True)):
        assert max_abs(ours, theirs.numpy().transpose(0, 2, 3, 1)) < TOL, f"hidden state {i}"
    assert max_abs(logits, expected.logits.numpy()) < TOL


class TorchvisionBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TorchvisionBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride on the 3x3
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class TorchvisionResNet(nn.Module):
    """torchvision.models.ResNet's structure and attribute names."""

    def __init__(self, block, layers, num_classes=1000, width=64):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], 2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], 2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@pytest.mark.parametrize(
    "block, layers, width, fmt",
    [
        (TorchvisionBasicBlock, [2, 2, 2, 2], 64, "pth"),  # resnet18 exactly
        (TorchvisionBottleneck, [3, 4, 6, 3], 16, "safetensors"),  # resnet50's layout, narrower
    ],
)
def test_torchvision_resnet(block, layers, width, fmt, tmp_path):
    torch.manual_seed(0)
    reference = TorchvisionResNet(block, layers, num_classes=10, width=width).eval()
    with torch.no_grad():
        _randomise_batch_norm(reference, 2)
    path = tmp_path / f"resnet.{fmt}"
    if fmt == "pth":
        torch.save(reference.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(pixels).numpy()
    model, variables, report = load_pretrained(path, verbose=False)
    assert not report.missing and not report.unexpected
    assert model.depths == tuple(layers) and model.layer_type == ("basic" if width == 64 else "bottleneck")
    assert max_abs(jit_apply(model, variables, _nhwc(pixels)), expected) < TOL


VGG16_TINY = [8, 8, "M", 16, 16, "M", 32, 32, 32, "M", 64, 64, 64, "M", 64, 64, 64, "M"]


class TorchvisionVGG(nn.Module):
    """torchvision.models.VGG's structure and attribute names (features.N, classifier.N)."""

    def __init__(self, cfg, num_classes, width):
        super().__init__()
        layers, channels = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(channels * 49, width),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(width, width),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(width, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def test_torchvision_vgg16_layout(tmp_path):
    torch.manual_seed(0)
    reference = TorchvisionVGG(VGG16_TINY, num_classes=7, width=32).eval()
    path = tmp_path / "vgg16.pth"
    torch.save(reference.state_dict(), path)
    # 112 px leaves a 3x3 grid, so the adaptive 7x7 pooling and the NCHW->NHWC reordering of fc1 both matter.
    pixels = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        expected = reference(pixels).numpy()
    model, variables, report = load_pretrained(path, verbose=False)
    assert not report.missing and not report.unexpected
    assert tuple(model.layers) == tuple(VGG16_TINY) and model.pool_size == 7
    assert max_abs(jit_apply(model, variables, _nhwc(pixels)), expected) < TOL
    features, _ = load_pretrained(path, num_classes=0, verbose=False)[:2]
    assert jit_apply(features, variables, _nhwc(pixels)).shape == (2, 32)
