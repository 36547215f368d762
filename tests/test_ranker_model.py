"""The ranker's network: masking, shapes, unknown ids (CPU, tiny)."""

from __future__ import annotations

import pytest
import torch
from recpipe.serving.layers import MLP, AttentionPooling, Dice, MeanPooling, PReLU, masked_positions
from recpipe.serving.model import INPUTS, RankerModelConfig, build_model

from tests.conftest import network_settings

pytestmark = pytest.mark.timeout(60)

B, L, U, I = 6, 5, 3, 2
ITEM, CAT, BRAND, HIST_ITEMS, HIST_CATS, HIST_BRANDS, HIST_LEN = range(7)
POSITION = INPUTS.index("position")


def config(**overrides) -> RankerModelConfig:
    values = {**network_settings(), "pooling": "attention", "item_vocab": 30, "cat_vocab": 6, "brand_vocab": 8,
              "history_length": L,
              "user_dense_dim": U, "item_dense_dim": I, "item_embedding_dim": 4, "cat_embedding_dim": 2,
              "attention_hidden": (8,), "head_hidden": (8, 4), "dropout": 0.0,
              "user_dense_mean": (1.0, 2.0, 3.0), "user_dense_std": (1.0, 0.0, 2.0)}
    values.update(overrides)
    return RankerModelConfig(**values)


def batch(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hist_len = torch.tensor([0, 1, 2, 5, 3, 4])
    hist_items = torch.randint(1, 30, (B, L), generator=g)
    hist_items[masked_positions(hist_len, L).logical_not()] = 0
    return [
        torch.randint(1, 30, (B,), generator=g),            # item_idx
        torch.randint(1, 6, (B,), generator=g),             # cat_idx
        torch.randint(1, 8, (B,), generator=g),             # brand_idx
        hist_items,                                         # hist_items
        torch.where(hist_items > 0, hist_items % 5 + 1, 0),  # hist_cats
        torch.where(hist_items > 0, hist_items % 7 + 1, 0),  # hist_brands
        hist_len,                                           # hist_len
        torch.randn(B, U, generator=g),                     # user_dense
        torch.randn(B, I, generator=g),                     # item_dense
        torch.randn(B, generator=g),                        # als_score
        torch.arange(B),                                    # position
    ]


def scramble_padding(inputs: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    """The same batch with random (even out-of-vocabulary) ids at every padded position."""
    out = [t.clone() for t in inputs]
    padded = masked_positions(inputs[HIST_LEN], L).logical_not()
    g = torch.Generator().manual_seed(seed)
    out[HIST_ITEMS][padded] = torch.randint(1, 10_000, (int(padded.sum()),), generator=g)
    out[HIST_CATS][padded] = torch.randint(1, 6, (int(padded.sum()),), generator=g)
    out[HIST_BRANDS][padded] = torch.randint(1, 8, (int(padded.sum()),), generator=g)
    return out


def test_masked_positions_are_the_last_hist_len_positions():
    mask = masked_positions(torch.tensor([0, 2, 4, 9]), 4)
    assert mask.tolist() == [
        [False, False, False, False],
        [False, False, True, True],
        [True, True, True, True],
        [True, True, True, True],  # longer than L: clipped
    ]


@pytest.mark.parametrize("pooling,weighting", [("attention", "sigmoid"), ("attention", "softmax"), ("mean", "sigmoid")])
def test_ids_at_padded_positions_change_nothing(pooling, weighting):
    torch.manual_seed(0)
    model = build_model(config(pooling=pooling, attention_weighting=weighting)).eval()
    inputs = batch()
    logits, weights = model.forward_with_weights(*inputs)
    logits2, weights2 = model.forward_with_weights(*scramble_padding(inputs))
    assert torch.equal(logits, logits2)  # bit for bit, not approximately
    assert torch.equal(weights, weights2)
    assert (weights[masked_positions(inputs[HIST_LEN], L).logical_not()] == 0).all()


@pytest.mark.parametrize("weighting", ["sigmoid", "softmax"])
def test_padded_history_values_contribute_nothing_to_attention_pooling_even_inf(weighting):
    pool = AttentionPooling(4, (8,), weighting)
    history, candidate = torch.randn(3, L, 4), torch.randn(3, 4)
    mask = masked_positions(torch.tensor([0, 2, 5]), L)
    poisoned = history.clone()
    poisoned[~mask] = float("inf")
    pooled, weights = pool(history, candidate, mask)
    pooled2, weights2 = pool(poisoned, candidate, mask)
    assert torch.equal(pooled, pooled2) and torch.equal(weights, weights2)
    assert torch.equal(pooled[0], torch.zeros(4))  # an empty history pools to zero
    if weighting == "softmax":
        assert torch.allclose(weights[1:].sum(dim=1), torch.ones(2))


def test_padding_gets_no_gradient_and_no_nan_with_empty_histories():
    model = build_model(config(attention_weighting="softmax", activation="prelu"))
    inputs = batch()
    inputs[HIST_LEN] = torch.zeros(B, dtype=torch.long)  # every history empty
    model(*inputs).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_mean_pooling_is_the_mean_of_real_items():
    history = torch.arange(2 * L * 2, dtype=torch.float32).reshape(2, L, 2)
    mask = masked_positions(torch.tensor([2, 0]), L)
    pooled, weights = MeanPooling()(history, torch.zeros(2, 2), mask)
    assert torch.equal(pooled[0], history[0, -2:].mean(dim=0))
    assert torch.equal(pooled[1], torch.zeros(2))
    assert weights[0].tolist() == [0, 0, 0, 0.5, 0.5]


@pytest.mark.parametrize("activation", ["dice", "prelu"])
def test_shapes_of_every_layer_and_model(activation):
    assert MLP(7, (5, 3), activation, 0.1, out_dim=1)(torch.randn(4, 7)).shape == (4, 1)
    assert MLP(7, (5,), activation, out_dim=None)(torch.randn(4, 7)).shape == (4, 5)
    assert Dice(5)(torch.randn(4, 5)).shape == (4, 5)
    assert PReLU(5)(torch.randn(4, L, 5)).shape == (4, L, 5)
    pooled, weights = AttentionPooling(6, (8, 4))(torch.randn(B, L, 6), torch.randn(B, 6), torch.ones(B, L, dtype=torch.bool))
    assert pooled.shape == (B, 6) and weights.shape == (B, L)
    for pooled_similarity in (False, True):
        model = build_model(config(activation=activation, pooled_similarity=pooled_similarity))
        logits, weights = model.forward_with_weights(*batch())
        assert logits.shape == (B,) and weights.shape == (B, L)
    assert model.embed(torch.tensor([[1, 2]]), torch.tensor([[1, 2]]), torch.tensor([[1, 2]])).shape == (1, 2, 6)


def test_unknown_ids_map_to_index_0_and_do_not_crash():
    torch.manual_seed(0)
    model = build_model(config()).eval()
    inputs = batch()
    unknown = [t.clone() for t in inputs]
    unknown[ITEM][:] = torch.tensor([30, 31, 10_000, -1, 2**31 - 1, 45])  # item_vocab is 30
    unknown[CAT][:] = 99                                                   # cat_vocab is 6
    unknown[BRAND][:] = 8                                                  # brand_vocab is 8
    zeros = [t.clone() for t in inputs]
    for column in (ITEM, CAT, BRAND):
        zeros[column][:] = 0
    assert torch.isfinite(model(*unknown)).all()
    assert torch.equal(model(*unknown), model(*zeros))
    assert model.known(torch.tensor([0, 5, 29, 30, -3]), 30).tolist() == [0, 5, 29, 0, 0]


def test_dense_features_are_normalised_with_the_train_statistics():
    model = build_model(config())
    x = torch.tensor([[1.0, 7.0, 5.0]])
    # (x - mean) / std, a zero std counted as 1, NaN to 0 (the mean)
    assert model._normalise(x, model.user_mean, model.user_std).tolist() == [[0.0, 5.0, 1.0]]
    assert model._normalise(torch.tensor([[float("nan")] * 3]), model.user_mean, model.user_std).tolist() == [[0.0] * 3]


def test_config_round_trips_through_its_dict():
    cfg = config(extra={"date": "2026-11-07"})
    assert RankerModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config keys"):
        RankerModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_embedding_init_std_scales_only_the_embeddings():
    torch.manual_seed(3)
    default = build_model(config())
    torch.manual_seed(3)
    small = build_model(config(embedding_init_std=0.01))
    for name, table in (("cat", small.cat_embedding), ("brand", small.brand_embedding)):
        reference = getattr(default, f"{name}_embedding").weight
        assert torch.allclose(table.weight, reference * 0.01), name  # the same draw, scaled
        assert torch.all(table.weight[0] == 0), name  # the padding/unknown row stays zero
    rest = {k: v for k, v in small.state_dict().items() if "embedding" not in k}
    assert all(torch.equal(v, default.state_dict()[k]) for k, v in rest.items())  # every other weight unchanged


def test_the_item_rows_start_small_so_an_item_starts_as_its_brand_and_category():
    torch.manual_seed(3)
    default = build_model(config(item_init_std=-1.0))  # < 0: the embeddings' std
    torch.manual_seed(3)
    small = build_model(config(item_init_std=0.01))
    assert torch.allclose(small.item_embedding.weight, default.item_embedding.weight * 0.01)
    items, cats, brands = torch.tensor([3, 17]), torch.tensor([2, 2]), torch.tensor([5, 5])
    represented = small.embed(items, cats, brands)
    # Two items of one brand and category are almost the same point before training...
    assert torch.allclose(represented[0], represented[1], atol=0.1)
    # ...and an item the network never saw (index 0) is exactly its brand and category.
    unseen = small.embed(torch.tensor([0]), cats[:1], brands[:1])[0]
    brand_and_cat = torch.cat([small.brand_embedding.weight[5], small.cat_embedding.weight[2]])
    assert torch.equal(unseen, brand_and_cat)


def test_position_shifts_the_logit_by_its_tower_alone_and_unknown_is_a_constant():
    torch.manual_seed(0)
    model = build_model(config(position_buckets=4)).eval()
    with torch.no_grad():
        model.position_tower.weight[1:, 0] = torch.tensor([0.5, 0.2, -0.3])  # slots 0, 1, and 2 and later
    inputs = batch()
    at = lambda slot: [*inputs[:POSITION], torch.full((B,), slot)]  # noqa: E731
    unknown = model(*inputs[:POSITION])  # what scoring does: no position
    assert torch.equal(model(*at(-1)), unknown)
    assert torch.allclose(model(*at(0)) - unknown, torch.full((B,), 0.5))
    assert torch.allclose(model(*at(1)) - unknown, torch.full((B,), 0.2))
    assert torch.allclose(model(*at(7)) - unknown, torch.full((B,), -0.3))  # every later slot shares a row
    assert torch.equal(model.position_tower.weight[0], torch.zeros(1))  # the unknown row is padding: never trained


def test_a_config_of_an_earlier_version_builds_the_network_it_was_trained_with():
    earlier = {k: v for k, v in config().to_dict().items()
               if k not in ("brand_vocab", "item_init_std", "position_buckets", "attention_similarity")}
    model = build_model(earlier)
    assert model.brand_embedding is None and model.position_tower is None
    assert model.pooling.log_temperature is None
    assert not any(k.startswith(("brand_embedding", "position_tower")) for k in model.state_dict())


def test_the_cosine_term_lets_attention_pick_the_most_similar_item():
    pool = AttentionPooling(4, (8,), "softmax", similarity="cosine")
    with torch.no_grad():
        for p in pool.unit.parameters():
            p.zero_()  # the MLP unit says nothing: only the cosine term decides
        pool.log_temperature.fill_(torch.log(torch.tensor(50.0)))
    candidate = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    history = torch.tensor([[[0.0, 1.0, 0.0, 0.0], [0.9, 0.1, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]])
    pooled, weights = pool(history, candidate, torch.ones(1, 3, dtype=torch.bool))
    assert weights[0].argmax() == 1 and weights[0, 1] > 0.99


def test_the_candidates_category_share_reaches_the_head_and_empty_histories_still_differ():
    """A user without clicks is not blank: their past impressions' category shares (in
    user_dense) tell candidates of a shown category from others."""
    torch.manual_seed(0)
    model = build_model(config(user_dense_dim=U + 5, user_dense_mean=(), user_dense_std=(), category_share_start=U,
                               category_share_width=5)).eval()
    inputs = batch()
    inputs[HIST_LEN] = torch.zeros(B, dtype=torch.long)  # no history at all
    shares = torch.zeros(B, 5)
    shares[:, 1] = 1.0  # every impression so far showed category 2
    inputs[INPUTS.index("user_dense")] = torch.cat([torch.zeros(B, U), shares], dim=1)
    inputs[CAT] = torch.tensor([2, 3, 2, 3, 2, 3])
    interest = model.category_interest(inputs[INPUTS.index("user_dense")], inputs[CAT])
    assert interest[:, 0].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]  # the share of the candidate's own category
    assert torch.allclose(interest[0, 1:], model.cat_embedding.weight[2] ** 2)
    logits = model(*inputs)
    assert logits[0] != logits[1]
    model_without = build_model(config())
    assert model_without.share_width == 0


@pytest.mark.parametrize("overrides", [
    {},
    {"pooling": "mean"},
    {"attention_similarity": "cosine", "pooled_similarity": True},
    {"attention_weighting": "sigmoid", "category_share_start": 1, "category_share_width": 2},
])
def test_candidates_sharing_a_history_score_as_the_history_repeated_for_each(overrides):
    # Scoring sends each user's history once with `owner` naming it for every candidate;
    # the network must be the same function as on the plain rows, padding and all.
    torch.manual_seed(0)
    model = build_model(config(**overrides)).eval()
    histories = batch(seed=3)  # six histories, of 0 to 5 real entries
    owner = torch.tensor([0, 1, 1, 3, 3, 3, 4, 5, 5, 2])
    extra = torch.randint(1, 30, (len(owner),), generator=torch.Generator().manual_seed(5))
    item, cat, brand = extra, extra % 5 + 1, extra % 7 + 1
    item_dense, als = torch.randn(len(owner), I), torch.randn(len(owner))
    position = torch.full((len(owner),), -1)
    shared = [*histories[HIST_ITEMS:HIST_LEN + 2]]  # the history inputs and user_dense, one row per history
    repeated = [t[owner] for t in shared]
    with torch.no_grad():
        plain = model(item, cat, brand, *repeated, item_dense, als, position)
        by_owner = model(item, cat, brand, *shared, item_dense, als, position, owner=owner)
    assert len(set(plain.round(decimals=5).tolist())) > 5  # rows that differ
    assert torch.allclose(by_owner, plain, atol=1e-5), (by_owner - plain).abs().max()
