"""Typed configs of the data stage: the synthetic market (`mmrank market generate`, with its simulated
behaviour) and the import of a team's logs (`mmrank data import` / `mmrank data build`).

Example::

    >>> from mmrank.data.config import MarketConfig
    >>> MarketConfig(n_items=1000).n_items
    1000
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_serializer, model_validator

from mmrank.config import StrictModel, build, load_yaml
from mmrank.data.schemas import HISTORY_LEN
from mmrank.errors import DataError


class BehaviourConfig(StrictModel):
    """How simulated users behave. Set from what real shops show, before any comparison was run.

    Rates the defaults aim at (the manifest records what a market reaches): display CTR 2-6% per
    impression (Alimama display ads ~5%, Ali-CCP ~4%), search CTR 5-15%, at most 30% of clicks carted
    and at most 50% of carts bought (Taobao UserBehavior: ~6% of item views carted, ~2% bought). Region
    values are listed largest region first; a list shorter than the number of regions repeats its last
    value.
    """

    region_shares: list[float] = Field([0.57, 0.30, 0.13], description="share of users per region")
    region_price_sensitivity: list[float] = Field([0.6, 1.0, 1.5])
    region_position_decay: list[float] = Field([0.55, 0.8, 1.1],
                                               description="examination = 1 / (1 + position) ** decay")
    region_photo_weight: list[float] = Field([1.0, 0.6, 1.4], description="weight on what photos show")
    region_title_weight: list[float] = Field([0.8, 1.3, 0.6], description="weight on what titles name")
    region_outside_option: list[float] = Field([0.3, 0.0, 0.6],
                                               description="utility of buying nothing among the carted")
    region_shown: list[int] = Field([20, 15, 10], description="search results shown per request")
    regional_assortment: float = Field(0.35, ge=0.0, le=1.0,
                                       description="share of items sold only in their home region")
    display_share: float = Field(0.45, ge=0.0, le=1.0, description="share of impressions on display")
    display_slots: int = Field(8, ge=2, le=50)
    search_candidates: int = Field(50, ge=5, le=200, description="retrieved per search request")
    burn_in_days: int = Field(30, ge=0, description="simulated before the logged samples begin")
    centres_max: int = Field(3, ge=1, le=8, description="interest centres per user (1..max)")
    taste_bandwidth: float = Field(1.6, gt=0.0)
    taste_weight: float = Field(1.0, ge=0.0)
    visible_appeal_std: float = Field(0.5, ge=0.0, description="appeal the content shows")
    hidden_appeal_std: float = Field(0.5, ge=0.0, description="appeal only behaviour reveals")
    revisit_weight: float = Field(0.8, ge=0.0, description="pull of near-duplicates of recent clicks")
    substitution: float = Field(0.8, ge=0.0, description="a look-alike shown above lowers the appeal")
    engagement_std: float = Field(0.5, ge=0.0, description="per-request mood no input carries")
    query_match_weight: float = Field(1.0, ge=0.0)
    display_intercept: float = Field(-4.2)
    search_intercept: float = Field(-4.0)
    cart_intercept: float = Field(-2.8)
    buy_intercept: float = Field(-2.0, description="search: utility of the carted items vs buying nothing")
    display_buy_intercept: float = Field(-1.2, description="display: a carted item is bought alone")
    target_rates: dict[str, float] = Field(
        {"display_click": 0.045, "search_click": 0.12, "cart_per_click": 0.22,
         "display_purchase_per_cart": 0.45, "search_purchase_per_cart": 0.45},
        description="what calibration fits the five intercepts to (see MarketConfig.calibrate)")
    policy_temperature: float = Field(
        0.0, ge=0.0, description="the search production policy: 0 shows the candidates by descending "
        "production score (deterministic, what most shops run); > 0 draws the shown list slot by slot from a "
        "Plackett-Luce model over production score / temperature (a randomised ranker with known "
        "propensities, as in counterfactual learning-to-rank practice: Joachims et al. 2017 randomise the top "
        "of arXiv/Yahoo search, Oosterhuis & de Rijke 2021 log Plackett-Luce policies). The production "
        "score spreads about 0.85 (std) over a request's ~50 candidates; at 0.5 (no exploration) the "
        "best-scored candidate is shown first in 39% of lists and 71% of the shown are of the top n by score "
        "(small market), at 1.0 (10% exploration) 17% and 56% (tiny market)")
    policy_exploration: float = Field(
        0.0, ge=0.0, le=1.0, description="share of each slot's draw that is uniform over the candidates not "
        "yet shown (an exploration bucket; shops that log for off-policy evaluation randomise a few "
        "percent of traffic: ZOZOTOWN's Open Bandit Dataset logs a uniform-random policy beside its "
        "production one, Yahoo! front page's R6 log is a random bucket); 0 = none")
    policy_marginal_samples: int = Field(
        128, ge=1, le=4096, description="Monte Carlo rankings per request for each candidate's marginal "
        "probability of each position (Rao-Blackwellised: the mean over sampled prefixes of the slot's "
        "exact conditional probability; the manifest's search_policy records its standard error)")

    @property
    def stochastic_policy(self) -> bool:
        """Whether the search production policy draws its lists (else today's deterministic order)."""
        return self.policy_temperature > 0 or self.policy_exploration > 0

    @model_serializer(mode="wrap")
    def _deterministic_policy_as_before(self, handler: Any) -> dict[str, Any]:
        """A deterministic policy is recorded as before the policy settings existed (so a default
        market's manifest and truth/behaviour.json keep their bytes); a stochastic one records all three."""
        out = handler(self)
        if not self.stochastic_policy:
            for k in ("policy_temperature", "policy_exploration", "policy_marginal_samples"):
                out.pop(k, None)
        return out


class MarketConfig(StrictModel):
    """The synthetic market (`mmrank market generate`)."""

    n_items: int = Field(20_000, ge=10)
    n_users: int = Field(50_000, ge=10)
    n_impressions: int = Field(2_000_000, ge=100, description="logged after the burn-in, both surfaces")
    n_regions: int = Field(3, ge=1, le=16)
    n_days: int = Field(30, ge=2)
    initial_item_share: float = Field(0.7, gt=0.0, le=1.0, description="items that exist on day 0")
    image_query_share: float = Field(0.3, ge=0.0, le=1.0)
    both_query_share: float = Field(
        0.0, ge=0.0, le=1.0, description="share of search queries made of words and a photo together "
        "(query_modality 'both'; taken from the text queries, so image_query_share + both_query_share <= 1). "
        "Default 0: no measured share of such queries was at hand; set it for issue 20's per-modality study")
    missing_image_share: float = Field(
        0.0, ge=0.0, le=1.0, description="share of items whose logged catalog row has no photo (the "
        "placeholder the importer uses stands in; items.parquet has_image = false). Default 0: the one real "
        "shop catalog at hand (../shared/data/fashion-catalog, 44,072 Myntra products) has no item without a "
        "photo (measured), and no other shop's share was measured here; set it for missing-modality studies "
        "(issue 20). Only the logged row lacks the photo: simulated users see the item as generated")
    noisy_pair_share: float = Field(
        0.0, ge=0.0, lt=1.0, description="share of the training <query, purchased item> pairs whose item "
        "was not what the query sought (a mis-attributed purchase: the pair's item is replaced by a "
        "uniformly drawn catalog item of another article type); flagged only in R/truth/noisy_pairs.parquet "
        "(pair_id = row of R/data/pairs.parquet), for measuring a noise filter. Test pairs stay clean. "
        "Default 0: the market's pairs are as the simulation logged them")
    missing_title_share: float = Field(
        0.0, ge=0.0, le=1.0, description="share of items whose logged title is empty (has_title = false). "
        "Default 0 for the same reason: the fashion catalog has no item without a title (measured)")
    zipf_exponent: float = Field(0.8, gt=0.0, description="exposure ~ 1 / rank ** exponent")
    drift: float = Field(0.3, ge=0.0, description="how far interest centres drift over the simulation")
    image_size: int = Field(64, ge=16, le=256)
    seed: int = 0
    catalog: str | None = Field(None, description="a real catalog (Parquet); behaviour is simulated on it")
    calibrate: bool | None = Field(None, description="fit the intercepts to behaviour.target_rates by "
                                   "pilot simulations on a tenth of the users before the real one. None: "
                                   "on for a real catalog (its content spreads differently), off for the "
                                   "synthetic one, whose hand-set intercepts land near the targets")
    behaviour: BehaviourConfig = Field(default_factory=BehaviourConfig)

    @model_validator(mode="after")
    def _missing_shares_fit(self) -> "MarketConfig":
        if self.image_query_share + self.both_query_share > 1.0:
            raise ValueError("image_query_share + both_query_share must be at most 1")
        if self.missing_image_share + self.missing_title_share > 1.0:
            raise ValueError("missing_image_share + missing_title_share must be at most 1 (an item keeps "
                             "its photo or its title)")
        return self


SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(n_items=1_500, n_users=2_000, n_impressions=60_000),
    "small": dict(n_items=6_000, n_users=12_000, n_impressions=400_000),
    "default": dict(n_items=20_000, n_users=50_000, n_impressions=2_000_000),
}


class DataConfig(StrictModel):
    """`mmrank data import` / `mmrank data build`: how logs become the run's tables."""

    split_ts: int | None = Field(None, ge=0, description="train/test boundary (seconds); None: the "
                                 "(1 - test_share) quantile of the events' ts, or the preset's own split")
    test_share: float = Field(0.2, gt=0.0, lt=1.0, description="share of events (by time) that is test "
                              "when split_ts is None")
    session_gap: int = Field(0, ge=0, description="impression logs without request ids: impressions of "
                             "one user at most this many seconds apart are one request (0: the same time)")
    history_len: int = Field(HISTORY_LEN, ge=1, description="at most L clicks per behaviour sequence")
    start_ts: int = Field(0, ge=0, description="events before this feed behaviour histories and sales only "
                          "(no samples, pairs or lists)")
    negatives_per_positive: int = Field(4, ge=1, le=100, description="logs without impressions: items "
                                        "sampled from the catalog (uniformly among items that exist at the "
                                        "time) shown beside each interaction, as negatives")
    pairs: Literal["auto", "queries", "item-to-item"] = Field(
        "auto", description="pre-training pairs: 'queries' = query -> purchased item (needs queries); "
                            "'item-to-item' = title of the item a user interacted with just before -> the "
                            "next one; 'auto' = queries when the log has them")
    check_images: bool = Field(True, description="decode every image at import (a bad one names its row)")
    seed: int = Field(0, description="seed of sampled negatives and positions")


def market_config(size: str = "default", config: str | Path | None = None, **overrides: Any) -> MarketConfig:
    """Resolve a :class:`MarketConfig`: size preset, then YAML file, then explicit overrides."""
    if size not in SIZES:
        raise DataError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}", column="size")
    data: dict[str, Any] = dict(SIZES[size])
    if config is not None:
        data.update(load_yaml(MarketConfig, config).model_dump(exclude_unset=True))
    data.update({k: v for k, v in overrides.items() if v is not None})
    return build(MarketConfig, data, "market config")
