"""Small seeded models for tests: random GPT-2 and Llama configurations, no downloads."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


def tiny_gpt2(seed: int = 0, *, n_layer: int = 2, n_head: int = 4, n_embd: int = 32, attn: str = "eager",
              score_gain: float = 1.0) -> GPT2LMHeadModel:
    """A random GPT-2; score_gain > 1 scales the query weights so attention is peaked (as in trained models)."""
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=97, n_positions=64,
                        bos_token_id=0, eos_token_id=0, attn_implementation=attn)
    model = GPT2LMHeadModel(config).eval()
    if score_gain != 1.0:
        with torch.no_grad():
            for block in model.transformer.h:
                block.attn.c_attn.weight[:, :n_embd] *= score_gain
    return model


def tiny_llama(seed: int = 0, *, attn: str = "eager") -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100, max_position_embeddings=128,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0, attn_implementation=attn)
    return LlamaForCausalLM(config).eval()


WINDOWED = {  # decoder families whose attention is not plain causal: a sliding window, or ALiBi (Bloom)
    "mistral": dict(sliding_window=4),                     # every layer windowed, shorter than prompt + generation
    "mistral_4096": dict(sliding_window=4096, max_position_embeddings=8192),  # Mistral-7B's window
    "phi3": dict(sliding_window=2047, max_position_embeddings=4096),          # Phi-3-mini's window and context
    "gemma2": dict(sliding_window=4, head_dim=8, layer_types=["sliding_attention", "full_attention"]),
    "gemma3_text": dict(sliding_window=4, head_dim=8, layer_types=["sliding_attention", "full_attention"]),
    "bloom": dict(initializer_range=0.5),
}


def tiny_windowed(family: str, seed: int = 0, *, attn: str = "eager", **config):
    """A random decoder of one WINDOWED family (two layers, 4 heads, 64 positions unless the family says; untied,
    wide initial weights so greedy decoding does not repeat one token); `config` overrides."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = {"initializer_range": 0.2, "tie_word_embeddings": False, **WINDOWED[family], **config}
    kind = family.removesuffix("_4096")
    shape = dict(n_layer=2, n_head=4, hidden_size=32) if kind == "bloom" else dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64)
    cfg = AutoConfig.for_model(kind, **{**dict(vocab_size=100, bos_token_id=0, eos_token_id=1, pad_token_id=0),
                                        **shape, **settings})
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).eval()


def padded_batch(vocab: int, batch: int = 2, seq: int = 12, pad: int = 3, seed: int = 1):
    """Token ids and an attention mask whose last sequence is left-padded by `pad` tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, :pad] = 0
    return ids, mask
