"""HF-compatible models: ``CheemsConfig``, ``CheemsModel``, ``CheemsForCausalLM``, ``CheemsCache``, presets, and
``GraphedDecoder`` (decoding steps replayed from a CUDA graph).

Importing this package registers ``model_type="cheems"`` with ``AutoConfig``, ``AutoModel`` and
``AutoModelForCausalLM``, and ``CheemsForCausalLM`` among transformers' causal-LM class names.
"""
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from . import convert, presets
from .cache import CheemsCache
from .configuration import CheemsConfig
from .graph_decode import GraphedDecoder
from .modeling import CheemsForCausalLM, CheemsModel, CheemsPreTrainedModel

AutoConfig.register(CheemsConfig.model_type, CheemsConfig, exist_ok=True)
AutoModel.register(CheemsConfig, CheemsModel, exist_ok=True)
AutoModelForCausalLM.register(CheemsConfig, CheemsForCausalLM, exist_ok=True)
# the class names transformers treats as causal LMs: the Trainer's label smoothing shifts the labels by one position
# only for these (and scored each token against itself otherwise); register() does not add to them
MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.setdefault(CheemsConfig.model_type, CheemsForCausalLM.__name__)

__all__ = ["CheemsCache", "CheemsConfig", "CheemsForCausalLM", "CheemsModel", "CheemsPreTrainedModel", "GraphedDecoder",
           "convert", "presets"]
