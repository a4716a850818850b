"""bfloat16 Linear layers on a CPU without native bfloat16 compute as float32 GEMMs with torch's own bfloat16
arithmetic: the same outputs as torch's bfloat16 kernels (but for the order of float32 sums), forward and backward,
and only where the job's dtype, device and setting ask for it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from estuary.lm.bf16_matmul import MIN_SIDE, emulates, widen_linears
from tests.conftest import build_tiny_model


def cpu_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)


def agree(got: torch.Tensor, want: torch.Tensor) -> None:
    """`got` is bfloat16 like `want`, bitwise equal on nearly every element and within one bfloat16 step (2^-7
    relative) on the rest: float32 sums in another order may round the other way."""
    assert got.dtype == want.dtype == torch.bfloat16 and got.shape == want.shape
    assert (got == want).float().mean().item() >= 0.99
    torch.testing.assert_close(got.float(), want.float(), rtol=2 ** -7, atol=1e-3 * float(want.abs().max()))


def bf16(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape))).bfloat16()


def layer_pair(k: int, n: int, bias: bool = True) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    """The same bfloat16 layer twice: torch's, and widened."""
    torch.manual_seed(k + n)
    plain = torch.nn.Linear(k, n, bias=bias).bfloat16()
    widened = torch.nn.Linear(k, n, bias=bias).bfloat16()
    widened.load_state_dict(plain.state_dict())
    assert widen_linears(widened) == 1
    return plain, widened


def conv1d_pair(k: int, n: int) -> tuple[Conv1D, Conv1D]:
    """The same bfloat16 GPT-2 `Conv1D` (a Linear with its weight stored input × output) twice."""
    torch.manual_seed(k + n)
    plain = Conv1D(n, k).bfloat16()
    torch.nn.init.normal_(plain.bias)
    widened = Conv1D(n, k).bfloat16()
    widened.load_state_dict(plain.state_dict())
    assert widen_linears(widened) == 1
    return plain, widened


def forward_backward(layer: torch.nn.Module) -> list[torch.Tensor]:
    x = bf16(2, 12, 300).requires_grad_()  # 24 rows
    out = layer(x)
    (out.float() ** 2).sum().backward()
    assert x.grad is not None
    grads = [p.grad for p in (layer.weight, layer.bias) if p is not None]
    assert all(g is not None for g in grads)
    return [out.detach(), x.grad, *grads]


@pytest.mark.parametrize("pair", [lambda: layer_pair(300, 40), lambda: layer_pair(300, 40, bias=False),
                                  lambda: conv1d_pair(300, 40)], ids=["linear", "linear-no-bias", "conv1d"])
def test_forward_and_backward_agree_with_torch_bfloat16(pair) -> None:  # type: ignore[no-untyped-def]
    plain, widened = pair()
    for got, want in zip(forward_backward(widened), forward_backward(plain), strict=True):
        agree(got, want)


def test_it_is_the_float32_gemm_rounded_once() -> None:
    """Bitwise what it claims: the float32 product of the widened operands, rounded to bfloat16."""
    _, widened = layer_pair(64, 32, bias=False)
    x = bf16(MIN_SIDE, 64)
    with torch.no_grad():
        want = (x.float() @ widened.weight.float().t()).bfloat16()
        assert torch.equal(widened(x), want)


def test_a_thin_call_stays_with_torch() -> None:
    """Decoding a few sequences, or a narrow layer: widening the weights would cost more than it saves."""
    plain, widened = layer_pair(64, 300)
    _, narrow = layer_pair(64, MIN_SIDE - 1)
    with torch.no_grad():
        thin = bf16(MIN_SIDE - 1, 64)
        assert torch.equal(widened(thin), plain(thin))  # torch's own kernel, bit for bit
        wide = bf16(MIN_SIDE, 64)
        assert torch.equal(widened(wide), (torch.nn.functional.linear(wide.float(), plain.weight.float(),
                                                                      plain.bias.float())).bfloat16())
        assert narrow(bf16(64, 64)).dtype == torch.bfloat16


def test_only_bfloat16_cpu_linears_are_widened() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8).bfloat16(),
                                torch.nn.Embedding(10, 8).bfloat16(), Conv1D(8, 8), Conv1D(8, 8).bfloat16())
    assert widen_linears(model) == 2
    assert [("forward" in vars(m)) for m in model] == [False, True, False, False, True]


def test_a_thin_conv1d_call_stays_with_torch() -> None:
    plain, widened = conv1d_pair(64, 300)
    with torch.no_grad():
        thin = bf16(MIN_SIDE - 1, 64)
        assert torch.equal(widened(thin), plain(thin))
        wide = bf16(2, MIN_SIDE, 64)
        want = torch.addmm(plain.bias.float(), wide.reshape(-1, 64).float(), plain.weight.float()).bfloat16()
        assert torch.equal(widened(wide), want.view(2, MIN_SIDE, 300))


def test_it_applies_only_to_bfloat16_on_a_cpu_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu_bf16(monkeypatch, False)
    assert emulates("bfloat16") and emulates(torch.bfloat16, "cpu", "auto")
    assert not emulates("bfloat16", setting="torch")
    assert not emulates("float32") and not emulates(torch.float16)
    assert not emulates("bfloat16", "cuda")
    cpu_bf16(monkeypatch, True)
    assert not emulates("bfloat16")


@pytest.mark.parametrize("native", [False, True])
def test_load_base_widens_where_it_emulates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, native: bool) -> None:
    from estuary.lm.model import load_base

    cpu_bf16(monkeypatch, native)
    path = str(build_tiny_model(tmp_path, ["a good film", "a bad film"]))

    def widened(**kw: str) -> int:
        model, _ = load_base(path, **kw)
        return sum("forward" in vars(m) for m in model.modules() if isinstance(m, torch.nn.Linear))

    linears = sum(isinstance(m, torch.nn.Linear) for m in load_base(path)[0].modules())
    assert linears > 1  # every projection and the LM head
    assert widened(dtype="bfloat16") == (0 if native else linears)
    assert widened(dtype="bfloat16", bf16_matmul="torch") == 0
    assert widened(dtype="float32") == 0


def test_a_model_trains_to_the_same_loss(tmp_path: Path) -> None:
    """A LoRA step of a (tiny) Llama in bfloat16: the loss and the adapter's gradients with widened Linear layers
    match torch's bfloat16 kernels to bfloat16 precision."""
    from estuary.lm.lora import LoraConfig
    from estuary.lm.model import attach_lora, load_base, trainable_parameters

    path = str(build_tiny_model(tmp_path, ["a good film", "a bad film", "a long film about nothing"]))
    texts = ["a good film about nothing", "a bad long film"] * 3  # 6 sequences: at least MIN_SIDE rows
    models = []
    for setting in ("torch", "auto"):
        base, tok = load_base(path, dtype="bfloat16", bf16_matmul=setting)
        if setting == "auto" and not emulates("bfloat16"):
            widen_linears(base)  # a CPU with native bfloat16: widen by hand, to compare the arithmetic anyway
        assert any("forward" in vars(m) for m in base.modules()) is (setting == "auto")
        models.append(attach_lora(base, LoraConfig(), seed=0))
    widened = [m for m in models[1].modules() if "forward" in vars(m)]
    assert widened and all(type(m) is torch.nn.Linear for m in widened)  # PEFT kept them as its base layers
    ids = tok(texts, return_tensors="pt", padding=True)["input_ids"]

    def step(model: torch.nn.Module) -> tuple[float, list[torch.Tensor]]:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return float(loss.detach()), [p.grad.float() for _, p in trainable_parameters(model) if p.grad is not None]

    (want_loss, want_grads), (got_loss, got_grads) = step(models[0]), step(models[1])
    assert got_loss == pytest.approx(want_loss, rel=2 ** -7)
    assert len(got_grads) == len(want_grads) > 0
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=0.05, atol=1e-3 * float(w.abs().max()) + 1e-8)


def test_a_gpt2_model_computes_the_same_loss() -> None:
    """GPT-2's attention and MLP are `Conv1D`s and its LM head a Linear: widened, a bfloat16 GPT-2's loss and
    gradients match torch's bfloat16 kernels to bfloat16 precision."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=32, bos_token_id=0,
                        eos_token_id=0, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)  # no dropout draws
    plain = GPT2LMHeadModel(config).bfloat16()
    widened = GPT2LMHeadModel(config).bfloat16()
    widened.load_state_dict(plain.state_dict())
    assert widen_linears(widened) == 2 * 4 + 1  # c_attn, c_proj, c_fc, mlp.c_proj per block; the LM head
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))

    def step(model: torch.nn.Module) -> tuple[float, torch.Tensor]:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grad = model.transformer.h[0].attn.c_attn.weight.grad
        assert grad is not None
        return float(loss.detach()), grad.float()

    (want_loss, want_grad), (got_loss, got_grad) = step(plain), step(widened)
    assert got_loss == pytest.approx(want_loss, rel=2 ** -7)
    torch.testing.assert_close(got_grad, want_grad, rtol=0.05, atol=1e-3 * float(want_grad.abs().max()))

    from estuary.lm.lora import LoraConfig
    from estuary.lm.model import attach_lora

    adapted = attach_lora(widened, LoraConfig(), seed=0)  # LoRA on c_attn, PEFT's fan-in-fan-out Conv1D
    base_layers = [m for m in adapted.modules() if "forward" in vars(m)]
    assert any(type(m) is Conv1D for m in base_layers) and len(base_layers) == 9
