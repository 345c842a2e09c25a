import torch
from torch import nn

from brainldm.nets.cpu_speed import use_onednn_convolutions


def test_onednn_convolutions_give_the_same_result():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(7, 16, 3, padding=1), nn.SiLU(), nn.Conv3d(16, 8, 3, stride=2, padding=1))
    x = torch.randn(1, 7, 20, 22, 18)
    with torch.inference_mode():
        expected = model(x)
        patched = use_onednn_convolutions(model)
        got = model(x)
    if torch.backends.mkldnn.is_available():
        assert patched == 2
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_training_still_uses_autograd():
    model = nn.Conv3d(4, 4, 3, padding=1)
    use_onednn_convolutions(model)
    x = torch.randn(2, 4, 8, 8, 8, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and model.weight.grad is not None
