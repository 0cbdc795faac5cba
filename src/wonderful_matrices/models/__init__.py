"""HF-compatible models: ``CheemsConfig``, ``CheemsModel``, ``CheemsForCausalLM``, ``CheemsCache``, presets, and
``GraphedDecoder`` (decoding steps replayed from a CUDA graph).

Importing this package registers ``model_type="cheems"`` with ``AutoConfig``, ``AutoModel`` and
``AutoModelForCausalLM``.
"""
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from . import convert, presets
from .cache import CheemsCache
from .configuration import CheemsConfig
from .graph_decode import GraphedDecoder
from .modeling import CheemsForCausalLM, CheemsModel, CheemsPreTrainedModel

AutoConfig.register(CheemsConfig.model_type, CheemsConfig, exist_ok=True)
AutoModel.register(CheemsConfig, CheemsModel, exist_ok=True)
AutoModelForCausalLM.register(CheemsConfig, CheemsForCausalLM, exist_ok=True)

__all__ = ["CheemsCache", "CheemsConfig", "CheemsForCausalLM", "CheemsModel", "CheemsPreTrainedModel", "GraphedDecoder",
           "convert", "presets"]
