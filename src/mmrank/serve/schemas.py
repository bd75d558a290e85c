"""Request and response bodies of the HTTP API (pydantic; they make the OpenAPI schema).

Every request model forbids unknown fields, so a typo is a 422 naming the field, not a silent default.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

INT64_MAX = 2**63 - 1
MAX_CANDIDATES = 1000
MAX_HISTORY_IN = 1000  # accepted; the model reads the last history_len (mmrank.data.schemas.HISTORY_LEN)

ItemId = Annotated[int, Field(ge=0, le=INT64_MAX, description="an item id (int64, >= 0)")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserIn(_In):
    """A user known to the logs (``user_id``), or given by recent behaviour (``history``), or both
    (``history`` then replaces the logged one)."""

    user_id: int | None = Field(None, ge=0, le=INT64_MAX)
    history: list[ItemId] | None = Field(None, max_length=MAX_HISTORY_IN,
                                         description="recent item ids, most recent last")


class ContextIn(_In):
    query: str | None = Field(None, max_length=1000, description="the search query (passed to the re-ranker)")
    region: int | None = Field(None, ge=0, le=32767, description="default: the user's last logged region")


class RankIn(_In):
    user: UserIn = Field(default_factory=UserIn)
    context: ContextIn = Field(default_factory=ContextIn)
    candidates: list[ItemId] = Field(..., min_length=1, max_length=MAX_CANDIDATES)
    explain: bool = Field(False, description="add per-item explanations (SimTier histogram, title)")

    @field_validator("candidates")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        seen: set[int] = set()
        for i, x in enumerate(v):
            if x in seen:
                raise ValueError(f"candidate {x} appears twice (first repeat at index {i})")
            seen.add(x)
        return v


class RankedItem(BaseModel):
    item_id: int
    rank: int = Field(description="0 = best")
    score: float = Field(description="predicted click probability")
    logit: float
    id_known: bool = Field(description="the ID model knows the item; false: the ID model has never seen it "
                                       "and a multimodal strategy scores it from its content (its vector)")
    title: str | None = None
    simtier: list[int] | None = Field(None, description="SimTier histogram against the user's history "
                                                         "(N tiers over [-1, 1])")


class RerankedItem(BaseModel):
    item_id: int
    rank: int
    score: float
    modality_weights: dict[str, float] | None = None


class RerankOutItem(BaseModel):
    item_id: int
    rank: int = Field(description="0 = best")
    score: float = Field(description="the re-ranker's ranking head (its logit; higher is better)")


class RerankOut(BaseModel):
    """``POST /v1/rerank``: the list's candidates in the re-ranker's order."""

    request_id: int | str | None = Field(None, description="as sent")
    model: str = Field(description="the re-ranker (R/rerank/<model>)")
    version: str = Field(description="hash of its weights, vocabularies and config")
    bundle: str
    items: list[RerankOutItem] = Field(description="every candidate, best first")


class UnknownItem(BaseModel):
    item_id: int
    reason: str


class RankOut(BaseModel):
    bundle: str
    strategy: str
    encoder_version: str
    user_known: bool
    history_length: int
    region: int
    items: list[RankedItem] = Field(description="scored candidates, best first")
    unknown: list[UnknownItem] = Field(description="candidates that were not scored, and why")
    reranked: list[RerankedItem] | None = Field(None, description="the re-ranker's order, when loaded")
    rerank_status: str


class ItemIn(_In):
    item_id: ItemId
    title: str = Field(..., min_length=1, max_length=1000)
    image_b64: str = Field(..., min_length=1, description="JPEG or PNG bytes, base64")
    category: str | None = Field(None, max_length=200)
    created_at: int | None = Field(None, ge=0, le=INT64_MAX)
    attributes: dict[str, str | int | float | bool] | None = Field(None, max_length=50)

    @field_validator("title")
    @classmethod
    def _title(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("title is blank")
        return v


class ItemOut(BaseModel):
    item_id: int
    encoder_version: str
    timings_ms: dict[str, float]
    sid_codes: list[int] | None = None  # semantic IDs assigned at ingest (a bundle of a sid strategy)


class ItemInfo(BaseModel):
    item_id: int
    in_table: bool
    title: str
    category_id: int


class SearchIn(_In):
    text: str | None = Field(None, min_length=1, max_length=1000)
    image_b64: str | None = Field(None, min_length=1)
    k: int = Field(10, ge=1, le=100)

    @model_validator(mode="after")
    def _one_query(self) -> "SearchIn":
        if (self.text is None) == (self.image_b64 is None):
            raise ValueError("give exactly one of 'text' or 'image_b64'")
        if self.text is not None and not self.text.strip():
            raise ValueError("text is blank")
        return self


class Hit(BaseModel):
    item_id: int
    score: float
    title: str


class SearchOut(BaseModel):
    encoder_version: str
    results: list[Hit]


class ReloadIn(_In):
    strategy: str | None = Field(None, max_length=40, description="default: the server's strategy")


class UserInfo(BaseModel):
    user_id: int
    history_length: int
    region: int | None


class ErrorOut(BaseModel):
    error: str
    field: str | None = None
