"""eagle2: vanilla, EAGLE-1, EAGLE-2 and EAGLE-3 speculative decoding on Hugging Face transformers causal LMs.

A library: it takes token ids and returns token ids with a GenerationRecord; it knows nothing of
tokenisation, suites or file formats (those are the harness's).
"""

from eagle2.decode import generate
from eagle2.draft import DynamicTreeProposer, StaticTreeProposer
from eagle2.eagle3_head import Eagle3Head
from eagle2.head import DraftHead
from eagle2.methods import METHODS, MethodSpec, get_method
from eagle2.record import GREEDY, GenerationRecord, SamplingConfig
from eagle2.target import FINAL_NORM, FeatureSpec, TargetModel
from eagle2.tree import DraftTree, StaticTreeShape, load_static_tree

__all__ = [
    "DraftHead",
    "DraftTree",
    "DynamicTreeProposer",
    "Eagle3Head",
    "FINAL_NORM",
    "FeatureSpec",
    "GREEDY",
    "GenerationRecord",
    "METHODS",
    "MethodSpec",
    "SamplingConfig",
    "StaticTreeProposer",
    "StaticTreeShape",
    "TargetModel",
    "generate",
    "get_method",
    "load_static_tree",
]
