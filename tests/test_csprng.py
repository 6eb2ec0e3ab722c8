"""protocols.ring.csprng: keyed AES-CTR streams, domain separation, fail-closed generator routing."""

import pytest
import torch

from protocols.ring import csprng


def test_a_stream_is_its_key_and_purpose():
    key = bytes(range(32))
    a, b = csprng.Stream(key, "x"), csprng.Stream(key, "x")
    assert torch.equal(a.ring((3, 5)), b.ring(15).view(3, 5))  # same key and purpose: same stream
    assert torch.equal(a.ring(7), b.ring(7))  # and it goes on (counter mode), across shapes
    other = csprng.Stream(key, "y").ring(1000)
    assert not torch.equal(csprng.Stream(key, "x").ring(1000), other)  # purposes are separate
    assert not torch.equal(csprng.Stream(csprng.fresh_key(), "x").ring(1000), other)


def test_ring_elements_cover_the_ring_and_bits_their_range():
    s = csprng.Stream(csprng.fresh_key(), "t")
    r = s.ring(200_000)
    assert r.dtype == torch.int64 and r.shape == (200_000,)
    assert (r < 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert len(r.unique()) == len(r)
    bits = s.bits((4, 50_000), 20)
    assert bits.min() >= 0 and bits.max() < 2**20
    assert bits.float().mean().item() == pytest.approx(2**19, rel=0.02)
    assert s.bits(10, 1).max() <= 1
    big = s.ring((1 << 18) + 3)  # more than one keystream chunk
    assert len(big.unique()) == len(big)


def test_keys_must_be_long_enough():
    with pytest.raises(ValueError):
        csprng.Stream(b"short", "x")
    with pytest.raises(ValueError):
        csprng.bind_pair(b"\0" * 16)


def test_unbound_generators_raise_and_bound_ones_draw_from_their_stream():
    csprng.reset()
    with pytest.raises(RuntimeError, match="refusing MT19937"):
        csprng.generate_random_ring_element((4,), generator=torch.Generator())
    with pytest.raises(RuntimeError, match="not agreed"):
        csprng.pair_stream(0)
    key = csprng.fresh_key()
    csprng.bind_pair(key)
    g = torch.Generator()
    csprng.bind_generator(g, lambda: csprng.pair_stream(0))
    got = csprng.generate_random_ring_element((2, 3), generator=g)
    assert torch.equal(got, csprng.Stream(key, "pair/0->1").ring((2, 3)))
    assert csprng.generate_kbit_random_tensor((5,), bitlength=3, generator=g).max() < 8
    assert csprng.generate_random_ring_element(6).shape == (6,)  # None: the local stream
    with pytest.raises(RuntimeError, match="second pair key"):
        csprng.bind_pair(csprng.fresh_key())
    csprng.reset()


def test_insecure_switch_is_only_the_environment(monkeypatch):
    monkeypatch.delenv(csprng.INSECURE_ENV, raising=False)
    assert not csprng.insecure_rng() and csprng.rng_name() == "aes-ctr"
    monkeypatch.setenv(csprng.INSECURE_ENV, "mt19937")
    assert csprng.insecure_rng() and csprng.rng_name() == "insecure-mt19937"
