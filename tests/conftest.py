import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):  # `-n 2`: one thread per worker, not two workers fighting over two cores
    import torch

    torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smollm2_loaded():
    """SmolLM2-135M (model, tokenizer), eager attention, loaded once for every test file that uses it (~20 s)."""
    import torch

    from lampc.models import smollm2

    torch.manual_seed(0)
    return smollm2.load_smollm2()
