"""Settings of `mmrank creative generate` and `mmrank creative compare` (:class:`CreativeConfig`)."""

from __future__ import annotations

from pydantic import Field

from mmrank.config import StrictModel

# The creative attributes: each is binary; value 0 is the shop's default look (the first word), 1 the
# alternative (the second word). The default creative of every item is all zeros.
ATTRIBUTES: dict[str, tuple[str, str]] = {
    "background": ("light", "dark"),
    "crop": ("loose", "tight"),
    "text_band": ("none", "band"),
    "border": ("none", "border"),
}


class CreativeConfig(StrictModel):
    """Creatives per item, the logging policy's exploration and the selector's training budget."""

    per_item: int = Field(3, ge=2, le=4, description="creatives per item (K); creative 0 is the default")
    exploration: float = Field(0.1, ge=0.0, lt=1.0, description="share of impressions where the logging "
                               "policy shows a non-default creative (uniform over them). 0.1 is an "
                               "ASSUMPTION about what shops do (a small exploration share), not a measured "
                               "figure")
    seed: int = Field(0, description="seed of the creatives' hidden appeal, the log's draws and the split")
    size: int = Field(64, ge=16, le=256, description="rendered creative side in pixels")
    max_impressions: int = Field(200_000, ge=100, description="impressions sampled into the creative log")
    test_share: float = Field(0.2, gt=0.0, lt=1.0, description="latest share of the log (by time) held "
                              "out as test impressions")
    history: int = Field(5, ge=1, le=50, description="the user context: the user's last N creative clicks "
                         "before the impression")
    taste_scale: float = Field(0.6, ge=0.0, description="hidden: std of a user's taste for each attribute "
                               "(log-odds of click)")
    region_scale: float = Field(0.3, ge=0.0, description="hidden: std of a region's liking of each "
                                "attribute (log-odds)")
    quality_scale: float = Field(0.15, ge=0.0, description="hidden: std of a creative's own quality "
                                 "(log-odds), not explained by its attributes")
    epochs: int = Field(8, ge=1, description="selector training epochs")
    lr: float = Field(0.05, gt=0.0, description="selector learning rate (Adam)")
    batch_size: int = Field(512, ge=1)
    weight_clip: float = Field(50.0, gt=0.0, description="inverse-propensity weights above this are clipped")
