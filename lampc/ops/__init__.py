"""lampc's custom ops: what a rewritten graph calls, each op registered by the module that declares it.

    softmax_site.py  lowp_scores, lamp_select, recompute_scores   (attention and logits sites)
    fused_site.py    lamp_scores: the three in one op over one buffer (SitePolicy.fused)
    attention_site.py  lamp_attention: a whole attention (scores, softmax, p·v) over chunks of keys
                     (SitePolicy.streaming)
    linear_site.py   lowp_matmul, component_select, recompute_linear   (layer_norm and activation sites; lowered
                     matmuls)
    rounded_softmax.py  rounded_softmax: the softmax with its exponentials rounded (SitePolicy.exp_format)
    tap.py           SelectionTap, the module a rewritten graph calls with each site's selection (statistics)
    random.py        RandomDraws, the module a rewritten graph calls for the random baseline's draws (per-model
                     streams, RandomStreams)
    cuda_site.py     lamp_scores' CUDA kernel: ŝ and the FP32 scores from one Triton kernel (emulated producers),
                     registered at import where torch sees a GPU and triton is installed
    recording.py     normalised_weights, normalised_component_weights and WeightTap: calibration's recording

Each op is a `torch.library.custom_op` with a plain-torch implementation (lampc.numerics, lampc.lookahead) and a
fake (shape-only) one, so rewritten graphs still export, trace and compile. Each op takes the parts of its site's
configuration it reads (lampc/config/) as their texts ('emulate m4', 'strict tau=0.1'), so a graph listing shows the
numbers. Importing this package registers every op a compiled graph calls; calibration's recording ops
(recording.py) register when lampc/passes/recording.py imports them.
"""

from __future__ import annotations

from .attention_site import ATTENTION_SITE_OPS, lamp_attention
from .fused_site import lamp_scores
from .linear_site import LINEAR_SITE_OPS, component_select, lowp_matmul, narrow_range, recompute_linear
from .rounded_softmax import rounded_softmax
from .random import RandomDraws, RandomStreams, reset_random, share_streams
from .softmax_site import SOFTMAX_SITE_OPS, lamp_select, lowp_scores, recompute_scores
from .tap import SelectionTap, graph_taps
from .cuda_site import register_cuda

import torch  # noqa: E402

register_cuda()  # lamp_scores' Triton kernel where torch sees a GPU and triton is installed; else nothing

FUSED_SITE_OPS = (torch.ops.lampc.lamp_scores.default,)
SITE_OPS = SOFTMAX_SITE_OPS + LINEAR_SITE_OPS + FUSED_SITE_OPS + ATTENTION_SITE_OPS
"""Every op a rewrite inserts: a value computed by one is already rewritten."""

__all__ = ["ATTENTION_SITE_OPS", "FUSED_SITE_OPS", "LINEAR_SITE_OPS", "SITE_OPS", "SOFTMAX_SITE_OPS", "RandomDraws", "RandomStreams",
           "SelectionTap", "component_select", "graph_taps", "lamp_attention", "lamp_scores", "lamp_select", "lowp_matmul", "lowp_scores",
           "narrow_range", "recompute_linear", "recompute_scores", "reset_random", "rounded_softmax", "share_streams"]
