"""The paper's CustomResNet: exact size, shapes, and that it learns."""
import torch

from utils.model import PAPER_PARAMETERS, CustomResNet, count_parameters, parameter_table


def test_paper_model_has_exactly_4997722_trainable_parameters():
    model = CustomResNet()
    assert count_parameters(model) == PAPER_PARAMETERS == 4_997_722
    assert sum(p.numel() for p in model.parameters()) == PAPER_PARAMETERS


def test_forward_shape_and_arguments_change_the_model():
    assert CustomResNet()(torch.zeros(3, 3, 32, 32)).shape == (3, 10)
    small = CustomResNet(channels=(16, 32), blocks=(1, 1), dropout=0.0, num_classes=4)
    assert small(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    assert count_parameters(small) < 100_000


def test_parameter_table_splits_the_total_by_component():
    table = parameter_table(CustomResNet())
    assert table["component"].tolist() == ["stem", "stage1", "stage2", "stage3", "stage4", "head (fc)", "total"]
    assert table["parameters"].iloc[:-1].sum() == table["parameters"].iloc[-1] == PAPER_PARAMETERS
    assert table.set_index("component").loc["head (fc)", "parameters"] == 364 * 10 + 10


def test_a_few_sgd_steps_lower_the_loss_on_a_tiny_batch():
    torch.manual_seed(0)
    model = CustomResNet()
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
