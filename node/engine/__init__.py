"""The inference engine: vLLM's AsyncLLM behind input/output documents (see DESIGN "Inference engine").

vllm, torch and transformers are imported only when an engine starts or a model is converted, so the
CLI and the gateway can import this package cheaply.
"""

from node.engine.engine import Engine, EngineError, StreamItem
from node.engine.model_fetch import DEFAULT_MODEL_NAME, ModelFetchError, fetch_default_model

__all__ = [
    "DEFAULT_MODEL_NAME",
    "Engine",
    "EngineError",
    "ModelFetchError",
    "StreamItem",
    "fetch_default_model",
]
