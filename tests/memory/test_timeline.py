"""Timeline JSON and plot."""

import json

import torch
from torch import nn

from smallfoot.memory import measure, plot_timeline, save_timeline


def test_timeline_json_and_plot(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    report = measure(model, (torch.randn(5, 4), torch.randint(3, (5,))), optimizer=opt)
    data = json.loads(save_timeline(report, tmp_path / "t.json").read_text())
    assert data["report"]["peak"] == report.peak
    assert max(data["timeline"]["live"]["total"]) == report.peak
    assert [p[0] for p in data["timeline"]["phases"]] == ["forward", "backward", "optimizer"]
    png = plot_timeline(report, tmp_path / "t.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
