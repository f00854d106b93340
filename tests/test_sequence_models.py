"""Sequence models: shapes, padding invariance, causality, weight sharing, learning."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from biaskd.config import model_from_conf
from biaskd.errors import ConfigError
from biaskd.models.sequence import LSTMEncoder, TransformerEncoderModel, UniversalTransformer

V = 23
TINY = {
    "lstm": dict(d_model=16),
    "transformer": dict(d_model=16, nhead=2, num_layers=2, dim_feedforward=32),
    "transformer_seq": dict(d_model=16, nhead=2, num_layers=2, dim_feedforward=32),
    "universal_transformer": dict(d_model=16, nhead=2, num_steps=3, dim_feedforward=32),
    "universal_transformer_seq": dict(d_model=16, nhead=2, num_steps=3, dim_feedforward=32),
}
CAUSAL = ["lstm", "transformer_seq", "universal_transformer_seq"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: intra-op threads only add synchronisation overhead (large on busy CPUs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(name, **kw):
    torch.manual_seed(0)
    return model_from_conf(name, vocab_size=V, num_classes=3, lm_head=True, **{**TINY[name], **kw}).eval()


def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, V, (5, 9), generator=g)
    x[1, 6:] = 0
    x[2, 2:] = 0
    x[3, 1:] = 0
    return x


@pytest.mark.parametrize("name", sorted(TINY))
def test_shapes(name):
    m = tiny(name)
    x = batch()
    assert m(x).shape == (5, 3)
    assert m.features(x).shape == (5, m.feature_dim) == (5, 16)
    assert m.token_features(x).shape == (5, 9, 16)
    if m.causal:
        assert m.lm_logits(x).shape == (5, 9, V)
    assert m.input_kind == "tokens"


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("grad", [True, False])
def test_padding_invariance(name, grad):
    m = tiny(name)
    x = batch()
    longer = torch.cat([x, torch.zeros(5, 6, dtype=torch.long)], 1)
    with torch.set_grad_enabled(grad):
        torch.testing.assert_close(m(x), m(longer), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m.features(x), m.features(longer), atol=1e-5, rtol=1e-5)
        real = (x != 0).unsqueeze(-1)
        a, b = m.token_features(x), m.token_features(longer)[:, :9]
        torch.testing.assert_close(a * real, b * real, atol=1e-5, rtol=1e-5)
        # one sequence alone gives the same result as inside a padded batch
        torch.testing.assert_close(m(x[2:3, :2]), m(x)[2:3], atol=1e-5, rtol=1e-5)


def test_lstm_features_are_last_hidden_state():
    m = tiny("lstm")
    x = batch()
    feats = m.features(x)
    for i in range(len(x)):
        n = int((x[i] != 0).sum())
        _, (h, _) = m.lstm(m.embedding(x[i : i + 1, :n]))
        torch.testing.assert_close(feats[i], h[-1, 0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", CAUSAL)
def test_causal_outputs_ignore_the_future(name):
    m = tiny(name)
    x = batch()
    changed = x.clone()
    changed[0, 5:] = (changed[0, 5:] % (V - 1)) + 1  # change tokens after position 4
    a, b = m.lm_logits(x), m.lm_logits(changed)
    torch.testing.assert_close(a[0, :5], b[0, :5], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[0, 5:], b[0, 5:])
    torch.testing.assert_close(a[1:], b[1:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["transformer", "universal_transformer"])
def test_bidirectional_sees_the_future_and_has_no_lm(name):
    m = tiny(name)
    x = batch()
    changed = x.clone()
    changed[0, 5:] = (changed[0, 5:] % (V - 1)) + 1
    assert not torch.allclose(m.token_features(x)[0, :5], m.token_features(changed)[0, :5])
    with pytest.raises(ConfigError, match="bidirectional"):
        m.lm_logits(x)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_universal_transformer_shares_weights_across_steps():
    kw = dict(d_model=16, nhead=2, dim_feedforward=32)
    counts = {n: n_params(UniversalTransformer(V, 2, num_steps=n, **kw)) for n in (1, 2, 6)}
    assert len(set(counts.values())) == 1
    layer = sum(p.numel() for p in nn.TransformerEncoderLayer(16, 2, 32, batch_first=True).parameters())
    assert n_params(TransformerEncoderModel(V, 2, num_layers=4, **kw)) - n_params(
        TransformerEncoderModel(V, 2, num_layers=1, **kw)) == 3 * layer
    learned = {n: n_params(UniversalTransformer(V, 2, num_steps=n, step_embedding="learned", **kw)) for n in (2, 6)}
    assert learned[6] - learned[2] == 4 * 16  # only the step embeddings grow
    # more steps = more computation with the same weights
    torch.manual_seed(0)
    m2 = UniversalTransformer(V, 2, num_steps=2, **kw).eval()
    m5 = UniversalTransformer(V, 2, num_steps=5, **kw).eval()
    m5.load_state_dict(m2.state_dict())
    assert not torch.allclose(m2(batch()), m5(batch()))


def test_tied_embeddings_and_heads():
    m = model_from_conf("lstm", vocab_size=V, num_classes=2, d_model=16, tie_embeddings=True)
    assert m.lm_head.weight is m.embedding.weight
    with pytest.raises(ConfigError, match="tie_embeddings"):
        LSTMEncoder(V, 2, d_model=16, embedding_dim=8, tie_embeddings=True)
    with pytest.raises(ConfigError, match="lm_head=True"):
        LSTMEncoder(V, 2, d_model=16).lm_logits(batch())
    lm_only = model_from_conf("transformer_seq", vocab_size=V, num_classes=0, lm_head=True, **TINY["transformer_seq"])
    assert lm_only.classifier is None and lm_only.lm_logits(batch()).shape == (5, 9, V)
    with pytest.raises(ConfigError, match="num_classes=0"):
        lm_only(batch())


def test_models_built_from_their_configs_and_errors():
    small = model_from_conf("transformer", vocab_size=50, num_classes=2)
    assert small.feature_dim == 128 and len(small.layers) == 2 and small.layers[0].self_attn.num_heads == 4
    assert model_from_conf("lstm", vocab_size=50).lstm.hidden_size == 256
    assert model_from_conf("lstm", vocab_size=50, d_model=64).lstm.hidden_size == 64  # overrides the file
    assert model_from_conf("lstm_base", vocab_size=50).lstm.num_layers == 2
    assert model_from_conf("universal_transformer_seq", vocab_size=50).causal
    assert not model_from_conf("universal_transformer", vocab_size=50).causal
    assert len(model_from_conf("transformer_base", vocab_size=50).layers) == 6
    assert model_from_conf("transformer", vocab_size=50, pooling="mean").features(batch()).shape == (5, 128)
    with pytest.raises(ConfigError, match="no model config 'gru'"):
        model_from_conf("gru", vocab_size=50)
    with pytest.raises(ConfigError, match="divisible"):
        TransformerEncoderModel(50, 2, d_model=10, nhead=3)
    with pytest.raises(ValueError, match="max_len"):
        TransformerEncoderModel(50, 2, d_model=16, nhead=2, max_len=4)(batch())


def toy_agreement(n=256, seed=0):
    """Token 1/2 = singular/plural subject, then filler 3..V-1 (incl. 'attractor' 1/2 at random
    later positions); the label is the number of the first token."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 10, (n,), generator=g)
    x = torch.randint(3, V, (n, 10), generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    x[:, 0] = 1 + y
    x[torch.arange(10)[None, :] >= lengths[:, None]] = 0
    return x, y


@pytest.mark.parametrize("name", ["lstm", "transformer", "universal_transformer_seq"])
def test_a_few_steps_reduce_the_loss(name):
    torch.manual_seed(0)
    m = model_from_conf(name, vocab_size=V, num_classes=2, dropout=0.0, **TINY[name])
    x, y = toy_agreement()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_lm_training_reduces_next_token_loss():
    torch.manual_seed(0)
    m = model_from_conf("lstm", vocab_size=V, num_classes=0, lm_head=True, tie_embeddings=True, d_model=16,
                        dropout=0.0)
    x, _ = toy_agreement()
    for t in range(1, x.size(1)):  # each token is a function of the previous one
        x[:, t] = torch.where(x[:, t] != 0, (x[:, t - 1] % (V - 3)) + 3, 0)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)

    def loss_fn():
        logits = m.lm_logits(x)[:, :-1]
        target = x[:, 1:]
        return nn.functional.cross_entropy(logits.reshape(-1, V), target.reshape(-1), ignore_index=0)

    first = loss_fn().item()
    for _ in range(30):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_fn().item() < 0.6 * first
