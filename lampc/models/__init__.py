"""Models lampc evaluates on: the embedded GPT-2 and a loader for local Hugging Face directories."""

from lampc.models.load import MODELS, ModelNotFoundError, load_model

__all__ = ["MODELS", "ModelNotFoundError", "load_model"]
