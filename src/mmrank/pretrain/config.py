"""Typed config of the pre-training stage and the Table 2 variants."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mmrank.config import StrictModel

# The paper's Table 2 rows, in its order, then SCL without the logQ correction.
VARIANTS = ("off-the-shelf", "clip-e", "scl", "scl-no-triplet", "scl-no-triplet-no-moco", "scl-no-logq")
Variant = Literal["off-the-shelf", "clip-e", "scl", "scl-no-triplet", "scl-no-triplet-no-moco",
                  "scl-no-logq"]
# Reference rows of the comparison that train nothing.
REFERENCES = ("popularity",)


class PretrainConfig(StrictModel):
    """`mmrank pretrain` (one variant). Loss switches follow from ``variant`` (see :meth:`uses`)."""

    variant: Variant = "scl"
    image_encoder: str = Field("efficientnet-lite0", description="a name from mmrank.encoders")
    text_encoder: str = Field("minilm", description="a name from mmrank.encoders")
    image_size: int | None = Field(None, ge=16, le=512,
                                   description="image input side; None: the photos' native size")
    trainable_blocks: int = Field(0, ge=0, description="last image-backbone blocks to fine-tune")
    dim: int = Field(256, ge=8)
    nested_dims: list[int] = Field(default_factory=lambda: [64, 128, 256],
                                   description="Matryoshka prefixes trained and evaluated")
    hidden: int = Field(512, ge=8)
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(256, ge=2, description="global batch (split over torchrun ranks)")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(20, ge=0)
    temperature: float = Field(0.07, gt=0, description="initial tau of Eq. 1 (learnable)")
    queue_size: int = Field(8192, ge=1, le=1_000_000, description="MoCo negatives K (paper: 196,800)")
    momentum: float = Field(0.99, ge=0, lt=1)
    key_path: Literal["online", "momentum"] = Field(
        "online", description="where the query->item InfoNCE's item keys come from: the online item "
        "tower (gradients flow into it) or the momentum encoder, as in MoCo (the queue always holds "
        "momentum keys)")
    margin: float = Field(0.2, ge=0)
    triplet_weight: float = Field(1.0, ge=0)
    symmetric: bool = Field(True, description="add the item->query in-batch InfoNCE term")
    logq_correction: bool = Field(True, description="subtract each negative's log purchase frequency "
                                  "from its logit (Yi et al. RecSys'19) so the query->item softmax keeps "
                                  "the popularity prior that Acc@N over purchases rewards (SCL variants)")
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints (0: each epoch)")
    resume: bool = Field(True, description="resume from R/pretrain/ckpt/<variant>/ when present")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (tests)")
    seed: int = 0

    def uses(self) -> dict[str, bool]:
        """Which parts of SCL this variant trains with."""
        v = self.variant
        return {"train": v != "off-the-shelf", "queries": v.startswith("scl"),
                "moco": v in ("scl", "scl-no-triplet", "scl-no-logq"),
                "triplet": v in ("scl", "scl-no-logq"),
                "logq": self.logq_correction and v != "scl-no-logq"}
