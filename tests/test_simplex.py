import pytest
import torch

from pyro_fusion.simplex import rebuild_simplex


def _normalised(x):
    return x / x.sum(-1, keepdim=True)


@pytest.mark.parametrize("num_clients", [1, 3])
@pytest.mark.parametrize("K", [2, 5])
def test_identical_clients_return_the_transition_matrix(num_clients, K):
    trans = _normalised(torch.rand(K, K, generator=torch.Generator().manual_seed(K), dtype=torch.float64) + 0.05)
    perms = [torch.randperm(K, generator=torch.Generator().manual_seed(j)) for j in range(num_clients)]
    # client j lists its states in the order perms[j]; its local state l is global perms[j][l]
    values = [trans[p][:, p] for p in perms]
    fused = rebuild_simplex(values, [0, 1], perms, torch.ones(num_clients), K, 1.0)
    torch.testing.assert_close(fused, trans)


def test_mixture_weights_are_weighted_by_client():
    values = [torch.tensor([0.5, 0.5]), torch.tensor([1.0])]
    fused = rebuild_simplex(values, [0], [torch.tensor([0, 1]), torch.tensor([1])], torch.tensor([1.0, 3.0]), 2, 1.0)
    torch.testing.assert_close(fused, torch.tensor([0.5 / 4, 3.5 / 4]))


def test_unseen_entries_get_the_prior_concentration():
    counts = torch.tensor([[9.0, 1.0], [3.0, 7.0]], dtype=torch.float64)
    fused = rebuild_simplex([counts], [0, 1], [torch.tensor([0, 2])], torch.ones(1), 3, 0.5)
    torch.testing.assert_close(fused[0], torch.tensor([9.0, 0.5, 1.0], dtype=torch.float64) / 10.5)
    torch.testing.assert_close(fused[1], torch.full((3,), 1 / 3, dtype=torch.float64))  # a row no client saw


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="client 0: simplex value of shape \\(3,\\) does not match its 2"):
        rebuild_simplex([torch.ones(3) / 3], [0], [torch.tensor([0, 1])], torch.ones(1), 2, 1.0)
