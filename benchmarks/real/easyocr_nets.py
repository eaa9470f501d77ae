"""torch modules for the pretrained state dicts the real-model benchmark uses, rebuilt here
(no torchvision, no easyocr/facenet-pytorch install) from their keys and shapes.

mcomp loads them as a user would: `model.factory: easyocr_nets:recognizer` with the state
dict the wheel ships. Parameter names match the files exactly (after the `module.` prefix
DataParallel added), so `load_state_dict(strict=True)` proves the layout; `check_nets.py`
proves the function (the recogniser reads rendered words, CRAFT's region map lights up on
text).

- `recognizer()`: easyocr's generation-2 English recogniser (`english_g2.pth`, 3.8 M
  parameters): a VGG-style feature extractor on 1x64xW grey crops in [-1, 1], width
  pooled to a sequence, two BiLSTM + Linear blocks, a 97-class CTC head (blank = 0).
- `craft()`: CRAFT (`craft_mlt_25k.pth`, 20.8 M parameters): VGG16-BN with fc6/fc7 as
  convolutions, a U-Net decoder; returns the region and affinity score maps
  (N, H/2, W/2, 2). The original also returns the last decoder feature map, which only
  CRAFT's optional refiner reads; it is left out so the exported graph has one output.
- `rnet()`, `onet()`: MTCNN's refinement and output networks (facenet-pytorch's
  `rnet.pt`, `onet.pt`). The face probability comes first here (facenet-pytorch returns it
  last) because mcomp's fidelity metrics read a model's first output.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# easyocr's English character set for english_g2; index 0 of the CTC head is the blank
EASYOCR_CHARACTERS = (
    "0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ €"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


class _BiLSTM(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(width, width, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.rnn(x)[0])


class _Recognizer(nn.Module):
    def __init__(self, channels: int, hidden: int, classes: int) -> None:
        super().__init__()
        c = [channels // 8, channels // 4, channels // 2, channels]

        def conv(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, 3, 1, 1, bias=bias)

        # the indices of this Sequential are the state dict's (ConvNet.0 ... ConvNet.18)
        self.FeatureExtraction = nn.Module()
        self.FeatureExtraction.ConvNet = nn.Sequential(
            conv(1, c[0]), nn.ReLU(), nn.MaxPool2d(2, 2),
            conv(c[0], c[1]), nn.ReLU(), nn.MaxPool2d(2, 2),
            conv(c[1], c[2]), nn.ReLU(), conv(c[2], c[2]), nn.ReLU(), nn.MaxPool2d((2, 1)),
            conv(c[2], c[3], False), nn.BatchNorm2d(c[3]), nn.ReLU(),
            conv(c[3], c[3], False), nn.BatchNorm2d(c[3]), nn.ReLU(), nn.MaxPool2d((2, 1)),
            nn.Conv2d(c[3], c[3], 2, 1, 0), nn.ReLU(),
        )  # fmt: skip
        self.SequenceModeling = nn.Sequential(_BiLSTM(hidden), _BiLSTM(hidden))
        self.Prediction = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.FeatureExtraction.ConvNet(x)  # N, C, 1, W/4 - 1 for 64-pixel crops
        # easyocr averages over the height (AdaptiveAvgPool2d((None, 1)) after a permute)
        sequence = features.mean(dim=2).permute(0, 2, 1)
        return self.Prediction(self.SequenceModeling(sequence))


def recognizer() -> nn.Module:
    """easyocr's english_g2 recogniser: input N x 1 x 64 x W in [-1, 1], output
    N x (W/4 - 1) x 97 CTC logits over `EASYOCR_CHARACTERS` (blank first)."""
    return _Recognizer(channels=256, hidden=256, classes=len(EASYOCR_CHARACTERS) + 1)


# VGG16-BN's feature layers (torchvision's cfg "D"): numbers are conv widths, M a max-pool
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
# where CRAFT cuts torchvision's `features` Sequential into slices (layer indices)
_SLICES = ((0, 12), (12, 19), (19, 29), (29, 39))


def _vgg16_bn_layers() -> list[nn.Module]:
    layers, cin = [], 3
    for item in _VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
            cin = item
    return layers


def _indexed(layers: list[nn.Module], start: int, end: int) -> nn.Sequential:
    """A Sequential whose child names are the layers' indices in torchvision's `features`,
    as in CRAFT's state dict (`basenet.slice2.14.weight`)."""
    sequential = nn.Sequential()
    for index in range(start, end):
        sequential.add_module(str(index), layers[index])
    return sequential


class _BaseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers = _vgg16_bn_layers()
        for number, (start, end) in enumerate(_SLICES, 1):
            setattr(self, f"slice{number}", _indexed(layers, start, end))
        self.slice5 = nn.Sequential(
            nn.MaxPool2d(3, 1, 1),
            nn.Conv2d(512, 1024, 3, padding=6, dilation=6),
            nn.Conv2d(1024, 1024, 1),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a = self.slice1(x)
        b = self.slice2(a)
        c = self.slice3(b)
        d = self.slice4(c)
        # CRAFT's slices 2-4 open with torchvision's in-place ReLU, which rewrites the
        # previous slice's output after it was kept as a skip source: the kept tensors a, b,
        # c are ReLU'd, d is not (slice5 opens with a max-pool). Written out functionally.
        return self.slice5(d), d, F.relu(c), F.relu(b), F.relu(a)


class _DoubleConv(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin + mid, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Craft(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.basenet = _BaseNet()
        self.upconv1 = _DoubleConv(1024, 512, 256)
        self.upconv2 = _DoubleConv(512, 256, 128)
        self.upconv3 = _DoubleConv(256, 128, 64)
        self.upconv4 = _DoubleConv(128, 64, 32)
        self.conv_cls = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 1), nn.ReLU(),
            nn.Conv2d(16, 2, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc7, *skips = self.basenet(x)
        y = self.upconv1(torch.cat([fc7, skips[0]], dim=1))
        for upconv, skip in zip((self.upconv2, self.upconv3, self.upconv4), skips[1:], strict=True):
            y = F.interpolate(y, size=skip.shape[2:], mode="bilinear", align_corners=False)
            y = upconv(torch.cat([y, skip], dim=1))
        return self.conv_cls(y).permute(0, 2, 3, 1)


def craft() -> nn.Module:
    """CRAFT: input N x 3 x H x W (RGB, ImageNet mean/std on 0-255 pixels, H and W
    multiples of 32), output N x H/2 x W/2 x 2 (region score, affinity score; logits that
    easyocr thresholds directly: text where region > 0.4)."""
    return _Craft()


class _MtcnnStage(nn.Module):
    """RNet/ONet: conv + PReLU + max-pool stacks, a dense layer, then heads."""

    def __init__(self, convs: list[tuple], dense: tuple[int, int], heads: dict) -> None:
        super().__init__()
        self.pools = []
        for number, (cin, cout, kernel, pool) in enumerate(convs, 1):
            setattr(self, f"conv{number}", nn.Conv2d(cin, cout, kernel))
            setattr(self, f"prelu{number}", nn.PReLU(cout))
            self.pools.append(pool)
        self.layers = len(convs)
        self.dense_name = f"dense{self.layers + 1}"
        setattr(self, self.dense_name, nn.Linear(*dense))
        setattr(self, f"prelu{self.layers + 1}", nn.PReLU(dense[1]))
        self.heads = list(heads)
        for name, width in heads.items():
            setattr(self, name, nn.Linear(dense[1], width))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for number, pool in enumerate(self.pools, 1):
            x = getattr(self, f"prelu{number}")(getattr(self, f"conv{number}")(x))
            if pool:
                x = F.max_pool2d(x, *pool, ceil_mode=True)
        # facenet-pytorch flattens in (W, H, C) order, as the Caffe original did
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        x = getattr(self, f"prelu{self.layers + 1}")(getattr(self, self.dense_name)(x))
        probability = torch.softmax(getattr(self, self.heads[0])(x), dim=1)
        return (probability, *(getattr(self, name)(x) for name in self.heads[1:]))


def rnet() -> nn.Module:
    """MTCNN RNet: input N x 3 x 24 x 24 (RGB, (pixel - 127.5) / 128), outputs the face
    probability (N x 2, softmax) and box offsets (N x 4)."""
    convs = [(3, 28, 3, (3, 2)), (28, 48, 3, (3, 2)), (48, 64, 2, None)]
    return _MtcnnStage(convs, (576, 128), {"dense5_1": 2, "dense5_2": 4})


def onet() -> nn.Module:
    """MTCNN ONet: input N x 3 x 48 x 48, outputs the face probability (N x 2), box
    offsets (N x 4) and five landmarks (N x 10)."""
    convs = [(3, 32, 3, (3, 2)), (32, 64, 3, (3, 2)), (64, 64, 3, (2, 2)), (64, 128, 2, None)]
    return _MtcnnStage(convs, (1152, 256), {"dense6_1": 2, "dense6_2": 4, "dense6_3": 10})
