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


def padded_batch(vocab: int, batch: int = 2, seq: int = 12, pad: int = 3, seed: int = 1):
    """Token ids and an attention mask whose last sequence is left-padded by `pad` tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, :pad] = 0
    return ids, mask
