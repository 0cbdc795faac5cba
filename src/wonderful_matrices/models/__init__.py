"""HF-compatible models: ``CheemsConfig``, ``CheemsModel``, ``CheemsForCausalLM``, ``CheemsCache``, presets.

Importing this package registers ``model_type="cheems"`` with ``AutoConfig``, ``AutoModel`` and
``AutoModelForCausalLM``.
"""
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from . import presets
from .cache import CheemsCache
from .configuration import CheemsConfig
from .modeling import CheemsForCausalLM, CheemsModel, CheemsPreTrainedModel

AutoConfig.register(CheemsConfig.model_type, CheemsConfig, exist_ok=True)
AutoModel.register(CheemsConfig, CheemsModel, exist_ok=True)
AutoModelForCausalLM.register(CheemsConfig, CheemsForCausalLM, exist_ok=True)

__all__ = ["CheemsCache", "CheemsConfig", "CheemsForCausalLM", "CheemsModel", "CheemsPreTrainedModel", "presets"]
