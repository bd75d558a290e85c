"""Off-policy estimators (:mod:`mmrank.rerank.offpolicy`) against Open Bandit Pipeline on the same
synthetic logs: item-position IPS and DR equal obp's ``InverseProbabilityWeighting`` /
``DoublyRobust`` run per position (each logged slot a round, the slot's position its ``position``;
obp averages over rounds, ours sums over slots per request) to 1e-6, SNIPS equals obp's
``SelfNormalizedInverseProbabilityWeighting`` on one-position logs; the position-based click model's EM
recovers the examination curve it was simulated with; and on logs drawn from a known policy the
estimators are unbiased for the true value of a new order."""

from __future__ import annotations

import numpy as np
import pytest

from mmrank.rerank.data import Lists
from mmrank.rerank.offpolicy import LoggedSlots, PositionBasedModel, estimate, target_weights

obp_ope = pytest.importorskip("obp.ope")


def synthetic_lists(n: int, c: int, k: int, seed: int) -> tuple[Lists, np.ndarray]:
    """n requests of c candidates, k shown by a uniform random policy (P0(i at j) = 1/c exactly)."""
    rng = np.random.default_rng(seed)
    offsets = np.arange(n + 1) * c
    item = rng.integers(0, 40, size=(n, c))
    for row in item:  # distinct items within a request
        row[:] = rng.choice(40, size=c, replace=False)
    pos = np.full((n, c), -1)
    for r in range(n):
        pos[r, rng.permutation(c)[:k]] = np.arange(k)
    shown = pos >= 0
    click = (shown & (rng.random((n, c)) < 0.3)).astype(np.int8)
    purchase = (click.astype(bool) & (rng.random((n, c)) < 0.4)).astype(np.int8)
    z = np.zeros(n * c)
    lists = Lists(request_id=np.arange(n), ts=np.zeros(n, np.int64), user_id=np.zeros(n, np.int64),
                  region=np.zeros(n, np.int64), query=[""] * n, is_train=np.ones(n, bool), offsets=offsets,
                  item_id=item.ravel().astype(np.int64), position=pos.ravel(), prod_score=z.astype(np.float32),
                  price=rng.uniform(5, 50, n * c), sales=z.astype(np.int64), category_id=z.astype(np.int64),
                  click=click.ravel(), cart=click.ravel(), purchase=purchase.ravel(),
                  hist_offsets=np.zeros(n + 1, np.int64), hist_item_id=np.zeros(0, np.int64),
                  hist_category_id=np.zeros(0, np.int64),
                  position_prob=np.full((n * c, k), 1.0 / c, np.float32))
    orders = [r * c + rng.permutation(c) for r in range(n)]
    return lists, orders


def _obp_inputs(lists: Lists, orders: list, slots: LoggedSlots, c: int, k: int, pbm: PositionBasedModel,
                price: bool):
    s = len(slots.cand)
    action = slots.cand - lists.offsets[slots.req]
    dist = np.zeros((s, c, k))
    for t in range(s):
        top = orders[slots.req[t]][:k]
        dist[t, top - lists.offsets[slots.req[t]], np.arange(k)] = 1.0  # the target's order, every position
    q = np.zeros((s, c, k))
    for t in range(s):
        cands = np.arange(lists.offsets[slots.req[t]], lists.offsets[slots.req[t] + 1])
        mult = lists.price[cands] if price else 1.0
        q[t, :, :] = (pbm.relevance(lists.item_id[cands]) * mult)[:, None] * pbm.theta[None, :k]
    return action, dist, q


@pytest.mark.parametrize("metric", ["clicks", "gmv"])
def test_ips_and_dr_equal_obp(metric: str) -> None:
    n, c, k = 300, 6, 3
    lists, orders = synthetic_lists(n, c, k, seed=1)
    rows = np.arange(n)
    slots = LoggedSlots.of(lists, rows)
    event = "purchase" if metric == "gmv" else "click"
    pbm = PositionBasedModel(np.array([1.0, 0.7, 0.45]), np.arange(40), np.linspace(0.05, 0.6, 40), 0.2)
    got = estimate(lists, rows, orders, {"click": pbm, "purchase": pbm}, slots)
    reward = lists.click[slots.cand].astype(float) if event == "click" else \
        lists.price[slots.cand] * lists.purchase[slots.cand]
    action, dist, q = _obp_inputs(lists, orders, slots, c, k, pbm, metric == "gmv")
    scale = len(slots.cand) / n  # obp: mean over rounds (slots); ours: sum over slots per request
    want_ips = obp_ope.InverseProbabilityWeighting().estimate_policy_value(
        reward=reward, action=action, position=slots.pos, pscore=slots.p0, action_dist=dist) * scale
    want_dr = obp_ope.DoublyRobust().estimate_policy_value(
        reward=reward, action=action, position=slots.pos, pscore=slots.p0, action_dist=dist,
        estimated_rewards_by_reg_model=q) * scale
    assert (target_weights(lists, slots, orders) > 0).sum() > 50  # the comparison covers many matches
    assert got["ips"][metric] == pytest.approx(want_ips, abs=1e-6)
    assert got["dr"][metric] == pytest.approx(want_dr, abs=1e-6)
    assert got["ips"][metric] != pytest.approx(got["dr"][metric], abs=1e-6)


def test_snips_equals_obp_on_one_position() -> None:
    n, c = 400, 5
    lists, orders = synthetic_lists(n, c, 1, seed=2)
    rows = np.arange(n)
    slots = LoggedSlots.of(lists, rows)
    pbm = PositionBasedModel(np.array([1.0]), np.arange(40), np.full(40, 0.3), 0.3)
    got = estimate(lists, rows, orders, {"click": pbm, "purchase": pbm}, slots)
    action, dist, _ = _obp_inputs(lists, orders, slots, c, 1, pbm, False)
    want = obp_ope.SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(
        reward=lists.click[slots.cand].astype(float), action=action, position=slots.pos, pscore=slots.p0,
        action_dist=dist)
    assert got["snips"]["clicks"] == pytest.approx(want, abs=1e-6)


def test_click_model_em_recovers_the_examination_curve() -> None:
    rng = np.random.default_rng(0)
    theta = np.array([1.0, 0.6, 0.4, 0.3, 0.2])
    gamma = rng.uniform(0.1, 0.8, 200)
    s = 60_000
    item, pos = rng.integers(0, 200, s), rng.integers(0, 5, s)
    event = rng.random(s) < theta[pos] * gamma[item]
    m = PositionBasedModel.fit(item, pos, event, n_iter=100)
    assert np.abs(m.theta - theta).max() < 0.06
    assert np.corrcoef(m.relevance(np.arange(200)), gamma)[0, 1] > 0.9


def test_estimators_are_unbiased_for_a_new_order_on_pbm_logs() -> None:
    """Clicks drawn from a known position-based model under a uniform logging policy: IPS, SNIPS and DR
    (with a deliberately wrong reward model) land on the target order's true expected clicks."""
    n, c, k = 4000, 6, 3
    lists, orders = synthetic_lists(n, c, k, seed=3)
    rng = np.random.default_rng(4)
    theta, gamma = np.array([0.9, 0.5, 0.3]), rng.uniform(0.05, 0.7, 40)
    shown = lists.position >= 0
    p = np.where(shown, theta[np.maximum(lists.position, 0)] * gamma[lists.item_id], 0.0)
    lists.click = (rng.random(len(p)) < p).astype(np.int8)
    truth = np.mean([np.sum(theta * gamma[lists.item_id[o[:k]]]) for o in orders])
    wrong = PositionBasedModel(np.array([1.0, 1.0, 1.0]), np.arange(40), np.full(40, 0.2), 0.2)
    got = estimate(lists, np.arange(n), orders, {"click": wrong, "purchase": wrong})
    for e in ("ips", "snips", "dr"):
        assert got[e]["clicks"] == pytest.approx(truth, rel=0.06), e
    assert abs(got["pbm"]["clicks"] - truth) > 0.05  # the wrong model alone is off
