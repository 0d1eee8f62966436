import importlib.resources
import pathlib

import numpy as np
import pytest
import torch

from pyro_fusion.datasets import Mocap6, load_mocap6

SHARED_MOCAP6 = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mocap6"
needs_shared = pytest.mark.skipif(not SHARED_MOCAP6.is_dir(), reason=f"source data {SHARED_MOCAP6} not available")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mocap6_shapes_and_labels(dtype):
    data = load_mocap6(dtype=dtype)
    assert isinstance(data, Mocap6)
    assert len(data.sequences) == len(data.labels) == len(data.names) == 6
    assert sum(len(x) for x in data.sequences) == 2064
    assert len(data.behaviours) == 12 and len(data.channels) == 12
    assert len(set(data.names)) == 6 and all(isinstance(name, str) for name in data.names)
    for sequence, labels in zip(data.sequences, data.labels):
        assert sequence.dtype == dtype and sequence.dim() == 2 and sequence.shape[1] == 12
        assert labels.dtype == torch.long and labels.shape == sequence.shape[:1]
        assert torch.isfinite(sequence).all()
        assert labels.min() >= 0 and labels.max() <= 11
    all_labels = torch.cat(data.labels)
    assert set(all_labels.tolist()) == set(range(12))  # every behaviour occurs somewhere


def test_mocap6_loads_fresh_tensors():
    first, second = load_mocap6(), load_mocap6()
    first.sequences[0].zero_()
    assert second.sequences[0].abs().sum() > 0


def test_mocap6_rejects_integer_dtype():
    with pytest.raises(ValueError, match="load_mocap6: dtype"):
        load_mocap6(dtype=torch.int64)


def test_mocap6_licence_ships_with_data():
    data_dir = importlib.resources.files("pyro_fusion.datasets").joinpath("data")
    licence = data_dir.joinpath("LICENSE.mocap6.txt").read_text()
    assert licence.count("Redistribution and use in source and binary forms") == 2  # NPBayesHMM and bnpy
    assert "mocap.cs.cmu.edu" in licence
    assert data_dir.joinpath("mocap6.npz").is_file()


@needs_shared
def test_mocap6_equals_text_source_files():
    data = load_mocap6(dtype=torch.float64)
    assert data.names == (SHARED_MOCAP6 / "SeqNames.txt").read_text().split()
    assert data.behaviours == (SHARED_MOCAP6 / "BehaviorNames.txt").read_text().split()
    true_labels = [line.split() for line in (SHARED_MOCAP6 / "zTrue.dat").read_text().splitlines() if line.strip()]
    for name, sequence, labels, source_labels in zip(data.names, data.sequences, data.labels, true_labels):
        source = np.loadtxt(SHARED_MOCAP6 / f"{name}.dat", ndmin=2)
        assert sequence.shape == source.shape
        # The .dat files carry 6 decimals; the package stores float32 of the full-precision values.
        np.testing.assert_allclose(sequence.numpy(), source, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(labels.numpy(), np.array(source_labels, dtype=np.int64) - 1)


@needs_shared
def test_mocap6_equals_full_precision_source():
    data = load_mocap6(dtype=torch.float64)
    source = np.load(SHARED_MOCAP6 / "bnpy" / "dataset.npz", allow_pickle=False)
    starts = source["doc_range"]
    assert data.channels == source["column_names"].astype(str).tolist()
    for i, (sequence, labels) in enumerate(zip(data.sequences, data.labels)):
        begin, end = starts[i], starts[i + 1]
        # bnpy's autoregressive layout: Xprev holds frames 0..T-2 and X frames 1..T-1.
        np.testing.assert_allclose(sequence[0].numpy(), source["Xprev"][begin], rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(sequence[1:].numpy(), source["X"][begin:end], rtol=1e-6, atol=1e-5)
        np.testing.assert_array_equal(labels[1:].numpy(), source["TrueZ"][begin:end] - 1)
