"""The two networks of docs/ARCHITECTURE.md, sized for a 2-core CPU at inference.

Both are fully convolutional: trained on patches (calcium) or whole grids (heart), run on the
whole model grid at inference. Every spatial size must be divisible by 8 (three stride-2
stages). Upsampling is nearest-neighbour (ONNX Resize, mode nearest), which every engine runs.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv(cin, cout, k=3, stride=1, dilation=1):
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv3d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
    )


def up2(x):
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class HeartNet(nn.Module):
    """Heart locator on the 4 mm coarse grid: 1 channel in, softmax (background, heart) out."""

    def __init__(self, w=8):
        super().__init__()
        self.e1 = conv(1, w, stride=2)  # 1/2
        self.e2 = conv(w, 2 * w, stride=2)  # 1/4
        self.e3 = nn.Sequential(
            conv(2 * w, 4 * w, stride=2),  # 1/8
            conv(4 * w, 4 * w, dilation=2),
            conv(4 * w, 4 * w, dilation=2),
        )
        self.d2 = conv(6 * w, 2 * w)
        self.d1 = conv(3 * w, w)
        self.head = nn.Conv3d(w + 1, 2, 1)

    def forward(self, x):
        e1 = self.e1(x)
        e2 = self.e2(e1)
        e3 = self.e3(e2)
        d2 = self.d2(torch.cat([up2(e3), e2], 1))
        d1 = self.d1(torch.cat([up2(d2), e1], 1))
        return self.head(torch.cat([up2(d1), x], 1))


class CalciumNet(nn.Module):
    """Per-vessel calcium segmenter on the fine crop: 4 channels (HU, z, y, x) in, softmax over
    (background, LM, LAD, LCX, RCA) out.

    Strided first conv to half resolution, few channels, dilated convs at 1/8 for a receptive
    field that sees the aorta and the heart's surface, skip connections back up, and a 1×1×1 head
    at full fine resolution that also sees the raw input (so labels follow the image's edges).
    About 4 GFLOP on the 64×192×192 crop, so tract runs it in seconds on two cores.
    """

    def __init__(self, classes=5):
        super().__init__()
        self.e1 = conv(4, 8, stride=2)  # 1/2
        self.e2 = nn.Sequential(conv(8, 24, stride=2), conv(24, 24))  # 1/4
        self.e3 = nn.Sequential(
            conv(24, 48, stride=2),  # 1/8
            conv(48, 48, dilation=2),
            conv(48, 48, dilation=4),
        )
        self.d2 = conv(72, 24, k=1)
        self.d1 = conv(32, 8, k=1)
        self.head = nn.Conv3d(12, classes, 1)

    def forward(self, x):
        e1 = self.e1(x)
        e2 = self.e2(e1)
        e3 = self.e3(e2)
        d2 = self.d2(torch.cat([up2(e3), e2], 1))
        d1 = self.d1(torch.cat([up2(d2), e1], 1))
        return self.head(torch.cat([up2(d1), x], 1))


class WithSoftmax(nn.Module):
    """Export wrapper: the ONNX output is the class probabilities."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.softmax(self.net(x), dim=1)
