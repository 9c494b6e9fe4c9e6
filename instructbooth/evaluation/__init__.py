"""Evaluation as InstructBooth and DreamBooth report it: CLIP-T (text fidelity), CLIP-I and DINO
(subject fidelity) on weights the user brings, loaded offline; see similarity.py for the
conventions. Importing this package loads no model."""

from .clip_embedder import ClipEmbedder, load_clip
from .dino_embedder import DinoEmbedder, load_dino
from .embedders import Embedder, load_embedder
from .image_processing import ImageProcessing
from .similarity import clip_score_100, cosine_matrix, mean_reference_cosine, paired_cosine
from .subject_measure import SubjectLikeness, subject_measure
from .weights import EvaluationWeightsError

__all__ = [
    "ClipEmbedder", "load_clip", "DinoEmbedder", "load_dino", "Embedder", "load_embedder", "ImageProcessing",
    "clip_score_100", "cosine_matrix", "mean_reference_cosine", "paired_cosine",
    "SubjectLikeness", "subject_measure", "EvaluationWeightsError",
]
