"""MSH: CompressAI's real entropy-coded strings behind a small header."""

import numpy as np
import pytest

from lossyvision import codecs
from lossyvision.codecs import CodecError


def test_header_and_padding(photo):
    a = np.ascontiguousarray(photo[:100, :150])  # not a multiple of 64: padded, then cropped
    c = codecs.create("msh", 2, weights="untrained")
    data = c.encode(a)
    assert data[:2] == b"MS" and data[2] == 2
    assert c.decode(data).shape == a.shape
    # decoding needs only the bytes: quality comes from the header
    assert codecs.create("msh", 5, weights="untrained").decode(data).shape == a.shape


def test_offline_without_weights_is_a_clear_error(photo, monkeypatch):
    import socket

    monkeypatch.setenv("TORCH_HOME", "/nonexistent-torch-home")
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)  # a firewall that drops packets must not hang the suite
    c = codecs.create("msh", 1)
    try:
        with pytest.raises(CodecError, match="weights"):
            c.encode(photo)
    finally:
        socket.setdefaulttimeout(old)


def test_weights_file(photo, tmp_path):
    import torch
    from compressai.zoo import mbt2018_mean

    m = mbt2018_mean(quality=1, pretrained=False)
    p = tmp_path / "msh1.pth"
    torch.save(m.state_dict(), p)
    c = codecs.create("msh", 1, weights=str(p))
    assert c.decode(c.encode(photo)).shape == photo.shape
    with pytest.raises(CodecError, match="does not exist"):
        codecs.create("msh", 1, weights=str(tmp_path / "missing.pth")).encode(photo)


def test_truncated_or_flipped_streams_are_refused(photo):
    c = codecs.create("msh", 2, weights="untrained")
    data = c.encode(photo)
    with pytest.raises(CodecError, match="truncated or corrupt"):
        c.decode(data[:-3])
    flipped = bytearray(data)
    flipped[-1] ^= 0x40
    with pytest.raises(CodecError, match="truncated or corrupt"):
        c.decode(bytes(flipped))
