"""protocols.ring.compat makes crypten 0.4.1 import and compute on torch 2.x, in one process."""

import os

import torch

from protocols.ring.compat import import_crypten


def test_crypten_multiply_and_softmax_round_trip():
    # crypten.init() writes RENDEZVOUS=file://..., WORLD_SIZE and RANK into os.environ; restore the
    # environment afterwards so later tests don't hand them to their party processes.
    saved_env = dict(os.environ)
    crypten = import_crypten()
    crypten.init()
    try:
        a = torch.tensor([[0.5, -1.25, 2.0], [3.0, 0.0, -0.75]])
        b = torch.tensor([[1.5, 2.0, -0.5], [0.25, 4.0, 1.0]])
        ea, eb = crypten.cryptensor(a), crypten.cryptensor(b)
        prod = (ea * eb).get_plain_text()
        assert torch.allclose(prod, a * b, atol=1e-3)
        soft = ea.softmax(dim=-1).get_plain_text()
        assert torch.allclose(soft, torch.softmax(a, dim=-1), atol=1e-2)
    finally:
        crypten.uninit()
        os.environ.clear()
        os.environ.update(saved_env)
