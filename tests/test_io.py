import json

import pytest
import torch
from safetensors.torch import save_file

from pyro_fusion import GuidePosterior, fuse_posteriors
from pyro_fusion.io import FORMAT
from pyro_fusion.posterior import decode_posterior, encode_posterior
from test_guides import client_guides


def tampered(post, change):
    tensors, header = encode_posterior(post)
    tensors = {k: v.clone() for k, v in tensors.items()}
    header = json.loads(json.dumps(header))
    change(tensors, header)
    return tensors, header


def _set(tensors, key, value):
    tensors[key] = value


CASES = {
    "nan": (lambda t, h: t["components/loc"].fill_(float("nan")), "tensor 'components/loc': contains NaN"),
    "negative precision": (lambda t, h: t["components/loc"][..., 1::2].fill_(1.0), "field 'loc'.*scales must be positive"),
    "wider": (lambda t, h: _set(t, "components/loc", torch.zeros(4, 4)), "shape \\(4, 4\\), expected \\(3, 4\\)"),
    "int dtype": (lambda t, h: _set(t, "components/loc", torch.zeros(3, 4, dtype=torch.int64)), "dtype torch.int64"),
    "extra tensor": (lambda t, h: _set(t, "components/evil", torch.zeros(1)), "unexpected \\['components/evil'\\]"),
    "missing tensor": (lambda t, h: t.pop("shared/noise"), "missing \\['shared/noise'\\]"),
    "version": (lambda t, h: h.__setitem__("version", 99), "unsupported format/version"),
    "kind": (lambda t, h: h["metadata"].__setitem__("kind", "fused_posterior"), "holds a 'fused_posterior'"),
    "family swap": (
        lambda t, h: h["groups"]["components"]["loc"].__setitem__("family", "point_mass"),
        "field components/loc: bad family spec|declared",
    ),
    "negative simplex": (lambda t, h: t["extra/simplex/weights"].fill_(-0.1), "negative probabilities"),
    "weight": (lambda t, h: h["metadata"].__setitem__("weight", -3), "weight must be a positive number"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_decode_rejects_tampered_posteriors(case, tmp_path):
    _, posts = client_guides(1)
    change, match = CASES[case]
    tensors, header = tampered(posts[0], change)
    with pytest.raises(ValueError, match=match):
        decode_posterior(tensors, header, "client 7", kind="guide_posterior")
    path = str(tmp_path / f"{case.replace(' ', '_')}.safetensors")
    save_file(tensors, path, metadata={FORMAT: json.dumps(header)})
    with pytest.raises(ValueError, match=f"{case.replace(' ', '_')}.safetensors"):
        GuidePosterior.load(path)


def test_decode_checks_max_width():
    _, posts = client_guides(1)
    tensors, header = encode_posterior(posts[0])
    with pytest.raises(ValueError, match="3 components, allowed 1..2"):
        decode_posterior(tensors, header, "client 0", max_width=2)


def test_encode_decode_round_trip_fused():
    _, posts = client_guides(2)
    fused = fuse_posteriors(posts).posterior
    back = decode_posterior(*encode_posterior(fused), "here", kind="fused_posterior")
    torch.testing.assert_close(back.result.components.concat(), fused.result.components.concat())
    assert back.result.objective == fused.result.objective
    assert back.site_shapes == fused.site_shapes and back.component_dims == fused.component_dims


def test_supports_round_trip_and_files_without_them_load(tmp_path):
    _, posts = client_guides(1)
    assert posts[0].supports == {"weights": "Simplex", "loc": "Real", "scale": "GreaterThan(0)", "noise": "GreaterThan(0)"}
    path = str(tmp_path / "p.safetensors")
    posts[0].save(path)
    assert GuidePosterior.load(path).supports == posts[0].supports
    tensors, header = tampered(posts[0], lambda t, h: h["metadata"].pop("supports"))  # a file of 0.1
    assert decode_posterior(tensors, header, "old file", kind="guide_posterior").supports == {}
