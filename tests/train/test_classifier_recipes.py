import math

import numpy as np

import pytest
import torch
import torchvision

from .classifier_shards import make_dataset
from lossyvision.pipelines.stream import ShardStream, make_loader, to_device
from lossyvision.train import teacher_cache as tc
from lossyvision.train.classifier import Trainer, TrainConfig
from lossyvision.train.models import head_module
from lossyvision.train.recipes import Batch, create_recipe, kl_term, list_recipes


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("shards"), n_train=32, n_val=16, shard_size=8)


def _hand_kl(student, teacher):
    """sum_i sum_c p_t (log p_t - log p_s), by hand from softmax definitions."""
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        zs = sum(math.exp(v) for v in s_row)
        zt = sum(math.exp(v) for v in t_row)
        for s, t in zip(s_row, t_row):
            pt = math.exp(t) / zt
            total += pt * (math.log(pt) - math.log(math.exp(s) / zs))
    return total


@pytest.mark.parametrize("reduction", ["batchmean", "sum"])
def test_expert_loss_matches_hand_computation(reduction):
    student = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    teacher = torch.tensor([[1.0, 1.5, -0.5], [0.0, -1.0, 2.0]])
    y = torch.tensor([0, 2])
    alpha = 0.3
    recipe = create_recipe("expert", alpha=alpha, kl_reduction=reduction)
    loss, parts = recipe.loss(lambda x: student, Batch(y=y, x_tilde=torch.zeros(2, 3), teacher=teacher))
    ce = -(math.log(math.exp(2.0) / sum(math.exp(v) for v in (2.0, 0.5, -1.0)))
           + math.log(math.exp(0.3) / sum(math.exp(v) for v in (0.1, 0.2, 0.3)))) / 2
    kl = _hand_kl(student, teacher) / (2 if reduction == "batchmean" else 1)
    assert loss.item() == pytest.approx(ce + alpha * kl, rel=1e-6)
    assert parts["kl"].item() == pytest.approx(kl, rel=1e-6)


def test_sum_reduction_is_batchmean_times_batch_size_and_temperature_scales():
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    assert kl_term(s, t, "sum").item() == pytest.approx(5 * kl_term(s, t, "batchmean").item(), rel=1e-6)
    assert kl_term(s, t, temperature=2.0).item() == pytest.approx(4 * kl_term(s / 2, t / 2).item(), rel=1e-6)
    with pytest.raises(ValueError, match="batchmean, sum"):
        kl_term(s, t, "mean")
    assert list_recipes() == ["expert", "finetune", "stability"]
    with pytest.raises(ValueError, match="choose one of expert, finetune, stability"):
        create_recipe("distill")


def test_cached_and_online_teacher_give_the_same_loss(toy, tmp_path):
    torch.manual_seed(0)
    teacher = torchvision.models.mnasnet0_5(weights=None, num_classes=4).eval()
    student = torchvision.models.mnasnet0_5(weights=None, num_classes=4).eval()
    spec = {"name": "mnasnet0_5", "weights": None, "num_classes": 4}
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    cache = tc.get_or_build(tmp_path / "t.h5", teacher, spec, toy / "val" / "orig", mean, std, batch_size=8)
    assert len(cache) == 16
    recipe = create_recipe("expert", alpha=0.5)
    ds = ShardStream(toy / "val" / "jpeg-q10", toy / "val" / "orig")
    with torch.no_grad():
        for x, xt, y, keys in make_loader(ds, 8):
            x, xt = to_device(x, "cpu", mean, std), to_device(xt, "cpu", mean, std)
            online, _ = recipe.loss(student, Batch(y=y, x=x, x_tilde=xt, teacher=teacher(x)))
            cached, _ = recipe.loss(student, Batch(y=y, x_tilde=xt, teacher=cache.lookup(keys)))
            # the cache stores the fp32 logits themselves
            assert cached.item() == pytest.approx(online.item(), rel=1e-6)
    # reopening validates; another teacher is refused
    tc.get_or_build(tmp_path / "t.h5", teacher, spec, toy / "val" / "orig", mean, std)
    with pytest.raises(tc.CacheMismatch, match="weights_sha256"):
        tc.get_or_build(tmp_path / "t.h5", student, spec, toy / "val" / "orig", mean, std)


def _cfg(toy, out, **kw):
    base = dict(shards=str(toy), variant="jpeg-q10", out=str(out), model="mnasnet0_5", epochs=1, batch_size=8,
                workers=0, shuffle_buffer=8, progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_stability_trains_only_the_head(toy, tmp_path):
    trainer = Trainer(_cfg(toy, tmp_path, recipe="stability", variant="orig", lr=1e-2, alpha=0.5, sigma=0.1))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    head = {n for n, p in trainer.model.named_parameters()
            if any(p is q for q in head_module(trainer.model).parameters())}
    trainer.run()
    after = dict(trainer.model.named_parameters())
    assert head and all(not torch.equal(before[n], after[n]) for n in head)
    assert all(torch.equal(before[n], after[n]) for n in before if n not in head)


def test_finetune_lowers_the_loss_on_a_learnable_toy(toy, tmp_path):
    cfg = _cfg(toy, tmp_path, recipe="finetune", model="small_cnn", lr=3e-3, epochs=6, max_lr_cuts=99,
               kl_reduction="batchmean")
    hist = Trainer(cfg).run()["history"]
    assert hist[0]["epoch"] == -1  # the initial model's val loss
    assert hist[-1]["train_loss"] < 0.7 * hist[1]["train_loss"]
    assert hist[-1]["val_loss"] < hist[0]["val_loss"]


def test_default_kl_term_is_the_papers_at_batch_320():
    """The default recipe (batchmean, alpha 3.2) gives exactly the paper code's
    alpha * nn.KLDivLoss(reduction='sum')(log_softmax(f(x~)), softmax(g(x))) with alpha 1e-2 at B = 320."""
    torch.manual_seed(0)
    student, teacher = torch.randn(320, 10) * 3, torch.randn(320, 10) * 3
    y = torch.randint(0, 10, (320,))
    loss, _ = create_recipe("expert").loss(lambda x: student, Batch(y=y, x_tilde=torch.zeros(1), teacher=teacher))
    paper = (torch.nn.CrossEntropyLoss()(student, y)
             + 1e-2 * torch.nn.KLDivLoss(reduction="sum")(torch.log_softmax(student, 1), torch.softmax(teacher, 1)))
    assert loss.item() == pytest.approx(paper.item(), rel=1e-5)
    # and at another batch size the per-sample strength stays the paper's (sum would be 320/64 = 5x weaker)
    s64, t64, y64 = student[:64], teacher[:64], y[:64]
    l64, parts = create_recipe("expert").loss(lambda x: s64, Batch(y=y64, x_tilde=torch.zeros(1), teacher=t64))
    per_sample = torch.nn.KLDivLoss(reduction="sum")(torch.log_softmax(s64, 1), torch.softmax(t64, 1)) / 64
    assert (l64 - torch.nn.CrossEntropyLoss()(s64, y64)).item() == pytest.approx(3.2 * per_sample.item(), rel=1e-5)


def test_stability_noise_matches_the_authors_uint8_code():
    from lossyvision.train.recipes import uint8_noise

    x = torch.tensor([0, 10, 100, 100, 255, 254], dtype=torch.uint8)
    z = torch.tensor([-1.0, 0.5, -1.0, 1.0, 1.0, 40.0])
    # numpy, as python/transforms.py: np.clip(x + N(0, 256 sigma), 0, 255).astype(np.uint8); sigma 5e-4: std 0.128
    got = uint8_noise(x, 5e-4, z)
    assert got.tolist() == [0.0, 10.0, 99.0, 100.0, 255.0, 255.0]
    np_ref = np.clip(x.numpy().astype(np.float64) + z.numpy() * 256 * 5e-4, 0, 255).astype(np.uint8)
    assert got.tolist() == np_ref.astype(float).tolist()
    # MnasNet's sigma 4e-2: std 10.24 levels
    assert uint8_noise(x, 4e-2, z).tolist() == [0.0, 15.0, 89.0, 110.0, 255.0, 255.0]


def test_stability_loss_uses_uint8_noise_by_default():
    torch.manual_seed(0)
    x_u8 = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    x = to_device(x_u8, "cpu", mean, std)
    seen = []

    def model(inp):
        seen.append(inp.clone())
        return inp.mean(dim=(2, 3))

    rec = create_recipe("stability", sigma=5e-4, mean=mean, std=std, alpha=1.0)
    torch.manual_seed(1)
    rec.loss(model, Batch(y=torch.zeros(4, dtype=torch.long), x=x, x_uint8=x_u8))
    noisy_pixels = seen[0] * 0.25 + 0.5  # back to [0, 1]
    diff = torch.round(noisy_pixels * 255) - x_u8.float()
    assert set(diff.unique().tolist()) <= {-1.0, 0.0}  # x - Bernoulli(0.5) at sigma 5e-4
    assert 0.3 < (diff == -1).float().mean().item() < 0.7
    with pytest.raises(ValueError, match="x_uint8"):
        rec.loss(model, Batch(y=torch.zeros(4, dtype=torch.long), x=x))
