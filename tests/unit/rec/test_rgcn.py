"""rec/rgcn.py: the grouped RGCN gives torch-geometric's RGCNConv, values and gradients."""
import pytest
import torch
from torch_geometric.nn import RGCNConv

from ecr_ray.rec.rgcn import RelationGroups


@pytest.mark.parametrize("num_bases", [None, 3])
def test_grouped_rgcn_is_rgcnconv(num_bases):
    torch.manual_seed(0)
    entities, relations, hidden = 40, 6, 8
    edge_index = torch.randint(0, entities, (2, 300))
    edge_type = torch.randint(0, relations - 1, (300,))  # the last relation has no edge
    edge_index, edge_type = torch.cat([edge_index, edge_index[:, :20]], 1), torch.cat([edge_type, edge_type[:20]])  # repeated edges
    conv = RGCNConv(hidden, hidden, relations, num_bases=num_bases)
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(entities, hidden, requires_grad=True)
    grouped = RelationGroups(edge_index, edge_type, entities, relations)
    expected, got = conv(x, edge_index, edge_type), grouped(conv, x)
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)
    weights = torch.randn_like(expected)
    inputs = [x, *conv.parameters()]
    for want, have in zip(torch.autograd.grad((expected * weights).sum(), inputs), torch.autograd.grad((got * weights).sum(), inputs), strict=True):
        assert torch.allclose(have, want, atol=1e-4)


def test_grouped_rgcn_refuses_a_conv_it_does_not_compute():
    conv = RGCNConv(4, 4, 2, aggr="add")
    grouped = RelationGroups(torch.tensor([[0], [1]]), torch.tensor([0]), 2, 2)
    with pytest.raises(ValueError, match="mean aggregation"):
        grouped(conv, torch.randn(2, 4))
