"""ONNX export of architectures beyond GPT-2/Llama: a library's custom op is translated where the library ships a
translation (transformers' grouped-GEMM MoE kernel) and refused by name where nobody does."""

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import lampc
from lampc.export import OnnxExportError, export_onnx, make_session, run_session

pytestmark = pytest.mark.slow  # whole-model integration tests: `-m "not slow"` leaves them out


@torch.library.custom_op("lampctest::twice", mutates_args=())
def twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@twice.register_fake
def _(x):
    return torch.empty_like(x)


class TwiceMLP(nn.Module):
    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp

    def forward(self, hidden_states):
        return torch.ops.lampctest.twice(self.mlp(hidden_states))


def test_mixtral_exports_through_transformers_own_translation(tmp_path):
    cfg = AutoConfig.for_model("mixtral", vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               num_key_value_heads=2, intermediate_size=64, num_local_experts=4, num_experts_per_tok=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    compiled = lampc.compile(model, format="m4", criterion="strict", tau=0.1)
    ops = {str(n.target) for n in compiled.graph_module.graph.nodes if n.op == "call_function"}
    assert "transformers.grouped_mm_fallback.default" in ops  # the MoE kernel really is in the graph
    path = str(tmp_path / "mixtral.onnx")
    export_onnx(compiled, path)
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    got = run_session(make_session(path, providers=["CPUExecutionProvider"]), ids, mask)["logits"]
    np.testing.assert_allclose(got, compiled(ids, attention_mask=mask).logits.detach().numpy(), atol=1e-5)


def test_an_untranslatable_custom_op_is_refused_by_name(tmp_path):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=32)).eval()
    model.transformer.h[0].mlp = TwiceMLP(model.transformer.h[0].mlp)
    compiled = lampc.compile(model, format="m4", criterion="strict", tau=0.1)
    with pytest.raises(OnnxExportError, match=r"op lampctest::twice .* at transformer.h.0.mlp .*no ONNX translation"):
        export_onnx(compiled, str(tmp_path / "x.onnx"))
