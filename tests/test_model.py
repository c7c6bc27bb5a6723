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


def test_stages_run_at_32_32_16_8_4_with_the_papers_widths_and_strides():
    model = CustomResNet().eval()
    shapes = {}
    hooks = [model.stem.register_forward_hook(lambda m, i, o: shapes.__setitem__("stem", tuple(o.shape)))]
    for k, stage in enumerate(model.stages):
        hooks.append(stage.register_forward_hook(
            lambda m, i, o, name=f"stage{k + 1}": shapes.__setitem__(name, tuple(o.shape))))
    with torch.no_grad():
        model(torch.zeros(2, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    assert shapes == {"stem": (2, 48, 32, 32), "stage1": (2, 48, 32, 32), "stage2": (2, 96, 16, 16),
                      "stage3": (2, 128, 8, 8), "stage4": (2, 364, 4, 4)}
    first_convs = [stage[0].conv1[0] for stage in model.stages]
    assert [conv.stride for conv in first_convs] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert [len(stage) for stage in model.stages] == [2, 2, 2, 2]


def test_dropout_is_0_1_before_the_classifier_and_only_active_in_train_mode():
    model = CustomResNet()
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropouts) == 1 and dropouts[0] is model.dropout and model.dropout.p == 0.1
    seen = []
    model.dropout.register_forward_hook(lambda m, i, o: seen.append((m.training, i[0].detach(), o.detach())))
    fc_inputs = []
    model.fc.register_forward_hook(lambda m, i, o: fc_inputs.append(i[0].detach()))
    torch.manual_seed(0)
    x = torch.randn(64, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        model(x)
    model.train()
    model(x)
    assert len(seen) == 2, "the forward pass must go through model.dropout"
    (eval_mode, eval_in, eval_out), (train_mode, train_in, train_out) = seen
    assert not eval_mode and torch.equal(eval_out, eval_in) and torch.equal(fc_inputs[0], eval_out)
    assert train_mode and torch.equal(fc_inputs[1], train_out)
    live = train_in != 0
    dropped = (train_out == 0) & live
    assert 0.05 < dropped.sum() / live.sum() < 0.15   # about 10 % of the features zeroed
    kept = ~dropped & live
    torch.testing.assert_close(train_out[kept], train_in[kept] / 0.9)
