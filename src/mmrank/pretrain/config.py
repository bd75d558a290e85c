"""Typed config of the pre-training stage and the Table 2 variants."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mmrank.config import StrictModel

# MOON2.0's four additions (issue 20): each row is SCL with one switch on, ``moon2`` with all four.
MOON_ROWS: dict[str, tuple[str, ...]] = {
    "moe": ("moe",), "align": ("align",), "coaug": ("coaug",), "filter": ("filter",),
    "moon2": ("moe", "align", "coaug", "filter"),
}
# Click-supervised visual encoding (issue 22): SCL with the ``click_visual`` switch on.
CLICK_ROWS: dict[str, tuple[str, ...]] = {"click-visual": ("click_visual",)}
# Every row that is SCL with switches on, and the switches it turns on.
SWITCH_ROWS: dict[str, tuple[str, ...]] = {**MOON_ROWS, **CLICK_ROWS}
# End-to-end fine-tuning (issue 30 part 4): SCL with the image backbone trained in every block from
# pixels and the text encoder's last ``finetune_text_layers`` layers from tokens
# (:mod:`mmrank.pretrain.finetune`). Not a default Table 2 row: name it in ``--variants``.
FINETUNE_ROWS = ("scl-finetune",)
# The config fields only the fine-tuning row reads (left out of other rows' checkpoint digests, so
# adding them did not invalidate a checkpoint made before).
FINETUNE_FIELDS = ("finetune_text_layers", "finetune_image_lr", "finetune_text_lr",
                   "finetune_warmup_steps", "grad_checkpointing", "augment", "augment_min_scale")
# The paper's Table 2 rows, in its order, then SCL without the logQ correction, then the MOON2.0 rows
# and the click-supervised visual row.
VARIANTS = ("off-the-shelf", "clip-e", "scl", "scl-no-triplet", "scl-no-triplet-no-moco", "scl-no-logq",
            *MOON_ROWS, *CLICK_ROWS, *FINETUNE_ROWS)
# The rows `mmrank pretrain compare` trains unless --variants names others.
TABLE2 = VARIANTS[:6]
Variant = Literal["off-the-shelf", "clip-e", "scl", "scl-no-triplet", "scl-no-triplet-no-moco",
                  "scl-no-logq", "moe", "align", "coaug", "filter", "moon2", "click-visual",
                  "scl-finetune"]
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
    # MOON2.0 switches (issue 20); off by default. The rows moe/align/coaug/filter/moon2 turn them on.
    moe: bool = Field(False, description="modality-driven mixture of experts in the item and query "
                      "towers: an expert each for image-only, text-only and image+title inputs plus a "
                      "shared expert; each sample is routed by its modality composition")
    align: bool = Field(False, description="dual-level alignment: add an item-level image-title "
                        "InfoNCE inside each product to the query-level objective")
    align_weight: float = Field(0.5, ge=0, description="weight of the item-level alignment term")
    coaug: bool = Field(False, description="image-text co-augmentation: train item keys on template "
                        "titles over the item's own visible attributes and on augmented photo views")
    coaug_views: int = Field(2, ge=1, le=4, description="photo views per item incl. the original "
                             "(crop and flip only; features cached once)")
    coaug_titles: int = Field(3, ge=1, le=6, description="titles per item incl. the original (the "
                              "others: attribute templates)")
    filter: bool = Field(False, description="dynamic sample filtering: after the warm-up, drop the "
                         "training pairs whose current query-item similarity is lowest")
    filter_warmup_epochs: int = Field(1, ge=0, description="epochs trained on every pair first")
    filter_share: float = Field(0.1, ge=0, lt=1, description="share of training pairs dropped per "
                                "epoch after the warm-up")

    # Click-supervised visual encoding (issue 22); off by default. The row click-visual turns it on.
    click_visual: bool = Field(False, description="click-supervised visual encoding: add an "
                               "image-tower InfoNCE over click pairs (the photo of an item a user "
                               "clicked against the photo of the item the same user clicked next; "
                               "clicks before the pre-training split only, mmrank.pretrain.clicks) "
                               "and an unbiased self-supervised InfoNCE between two augmented views "
                               "of one photo (items drawn uniformly from the catalog)")
    click_visual_weight: float = Field(0.5, ge=0, description="weight of the click-pair term "
                                       "(click_visual_loss)")
    click_visual_view_weight: float = Field(0.5, ge=0, description="weight of the two-view "
                                            "self-supervised term (view_ssl_loss)")
    click_visual_views: int = Field(4, ge=2, le=4, description="photo views per item incl. the "
                                    "original, for the self-supervised term (geometry only: flip, "
                                    "crop, crop+flip; no colour change; features cached once)")
    click_visual_batch: int = Field(256, ge=2, description="click pairs, and catalog items, per "
                                    "step for the two terms (global; split over torchrun ranks)")
    click_visual_max_gap_s: int | None = Field(None, ge=1, description="drop a click pair whose two "
                                               "clicks lie further apart (seconds); None: keep all")

    # End-to-end fine-tuning (issue 30 part 4): read by the scl-finetune row only.
    finetune_text_layers: int = Field(2, ge=-1, description="scl-finetune: the text encoder's last N "
                                      "transformer layers trained from tokens (0: the text encoder "
                                      "stays frozen, cached features; -1: every layer and the "
                                      "embeddings)")
    finetune_image_lr: float = Field(1e-4, gt=0, description="scl-finetune: learning rate of the "
                                     "image backbone (every block, stem included)")
    finetune_text_lr: float = Field(2e-5, gt=0, description="scl-finetune: learning rate of the "
                                    "text encoder's trained layers")
    finetune_warmup_steps: int = Field(100, ge=0, description="scl-finetune: the backbones' own "
                                       "linear warm-up (the heads keep warmup_steps); then the same "
                                       "cosine decay as the heads")
    grad_checkpointing: bool = Field(True, description="scl-finetune: recompute the EfficientNet "
                                     "blocks / BERT layers in the backward pass instead of keeping "
                                     "their activations (torch.utils.checkpoint)")
    augment: bool = Field(True, description="scl-finetune: photo augmentation of each training "
                          "batch of pixels, on the device (random resized crop + horizontal flip; "
                          "none at evaluation)")
    augment_min_scale: float = Field(0.5, gt=0, le=1, description="scl-finetune: the smallest "
                                     "share of the photo's area a random crop keeps")

    def end_to_end(self) -> bool:
        """True for the row that fine-tunes the backbones end to end (``scl-finetune``)."""
        return self.variant in FINETUNE_ROWS

    def switches(self) -> dict[str, bool]:
        """The MOON2.0 and click-visual switches in effect: the fields, or'ed with the variant's row."""
        on = set(SWITCH_ROWS.get(self.variant, ()))
        return {k: bool(getattr(self, k)) or k in on
                for k in ("moe", "align", "coaug", "filter", "click_visual")}

    def uses(self) -> dict[str, bool]:
        """Which parts of SCL this variant trains with."""
        v = "scl" if self.variant in SWITCH_ROWS or self.variant in FINETUNE_ROWS else self.variant
        return {"train": v != "off-the-shelf", "queries": v.startswith("scl"),
                "moco": v in ("scl", "scl-no-triplet", "scl-no-logq"),
                "triplet": v in ("scl", "scl-no-logq"),
                "logq": self.logq_correction and v != "scl-no-logq"}
