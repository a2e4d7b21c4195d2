"""UPN: Universal Proposal Network (two-stage deformable DETR with fine/coarse prompts)."""
from .build import PRESETS, get_config
from .config import BackboneConfig, ImageConfig, LossConfig, TransformerConfig, UPNConfig
from .losses import SetCriterion
from .matcher import HungarianMatcher
from .modeling import UPNModel, UPNOutput
from .ms_deform_attn import MultiScaleDeformableAttention, multi_scale_deformable_attention
from .postprocess import Proposals
from .predictor import PRETRAINED, UPNPredictor

__all__ = [
    "PRESETS", "get_config", "UPNConfig", "BackboneConfig", "TransformerConfig", "LossConfig",
    "ImageConfig", "UPNModel", "UPNOutput", "SetCriterion", "HungarianMatcher",
    "MultiScaleDeformableAttention", "multi_scale_deformable_attention", "Proposals", "UPNPredictor", "PRETRAINED",
]
