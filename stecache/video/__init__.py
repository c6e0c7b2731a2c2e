"""Video file -> normalised clip tensor [V, 3, T, H, W]: sampling, decoding and preprocessing.

`sampling.py` picks frame indices (mmaction2 SampleFrames / UniformSample), `decode.py` reads frames with
PyAV (short or broken streams, segments, frame folders) and holds `load_clip`, `preprocess.py` resizes,
crops and normalises (mmaction2 Resize + CenterCrop/ThreeCrop) and places boxes. Annotation readers live
in `annotations/` and are re-exported here. Usage: `load_clip(path, Sampling(), Preprocess())`.
"""

from ..annotations import Clip, Dataset, load_dataset_dir, read_annotations, read_classes
from .decode import (
    PLAYLIST_MAGIC,
    BrokenStream,
    ShortStream,
    count_frames,
    decode_frames,
    frame_files,
    iter_frames,
    load_clip,
    segment_frames,
)
from .preprocess import (
    Preprocess,
    arrange_views,
    box_pixels,
    crop_offsets,
    crop_views,
    preprocess_frames,
    resized_size,
)
from .sampling import Sampling, frame_indices, sample_frames, uniform_sample

__all__ = ["Clip", "Dataset", "Sampling", "Preprocess", "sample_frames", "uniform_sample", "frame_indices"]
__all__ += ["count_frames", "iter_frames", "decode_frames", "load_clip", "preprocess_frames", "crop_views"]
__all__ += ["resized_size", "segment_frames", "frame_files", "box_pixels", "BrokenStream", "ShortStream"]
__all__ += ["read_annotations", "read_classes", "load_dataset_dir", "crop_offsets", "arrange_views"]
__all__ += ["PLAYLIST_MAGIC"]
