"""Links, batched training and ensembles on data where the relation between models is known."""

import numpy as np
import pytest
import torch

from mlink.linkstore.ensemble import WeightedEnsemble
from mlink.linkstore.links import SeqToSeqLink, SeqToVecLink, VecToSeqLink, VecToVecLink
from mlink.linkstore.linkset import LinkSet
from mlink.linkstore.metrics import agreement
from mlink.linkstore.training import StackedVecLinks, TrainConfig, split_indices, train_stacked
from mlink.topics.specs import SequenceSpec, VectorSpec, encode_batch

FAST = TrainConfig(epochs=40, ensemble_epochs=40)
EYE10 = np.eye(10, dtype=np.float32)


def digit_outputs(n: int, seed: int = 0) -> tuple[np.ndarray, dict[str, list]]:
    digit = np.random.default_rng(seed).integers(0, 10, n)
    return digit, {
        "digit": [EYE10[d] for d in digit],
        "parity": [np.eye(2, dtype=np.float32)[d % 2] for d in digit],
        "third": [np.array([d // 3], dtype=np.float32) for d in digit],
    }


def test_vec_to_vec_links_learn_deterministic_maps():
    _, outputs = digit_outputs(500)
    specs = {
        "digit": VectorSpec(10, "softmax"),
        "parity": VectorSpec(2, "softmax"),
        "third": VectorSpec(1, "count", max_count=3),
    }
    ls = LinkSet.train(specs, outputs, FAST, progress=False)
    _, test = digit_outputs(300, seed=1)
    oracle = ls.agreement_oracle(test)
    # digit determines both parity and digit // 3 exactly
    assert oracle(frozenset({"digit"}), "parity") == 1.0
    assert oracle(frozenset({"digit"}), "third") == 1.0
    # parity alone cannot say which digit: at best 1 in 5
    assert oracle(frozenset({"parity"}), "digit") < 0.3
    assert isinstance(ls.links[("digit", "parity")], VecToVecLink)


def test_stacked_links_extract_to_identical_standalone_links():
    rng = np.random.default_rng(0)
    inputs = [
        rng.normal(size=(64, 3)).astype(np.float32),
        rng.normal(size=(64, 7)).astype(np.float32),
    ]
    stacked = StackedVecLinks([3, 7], out_dim=4)
    stacked.fit_normalisation(
        torch.stack(
            [torch.nn.functional.pad(torch.from_numpy(x), (0, 7 - x.shape[1])) for x in inputs]
        )
    )
    stacked.eval()
    padded = torch.zeros(2, 64, 7)
    padded[0, :, :3] = torch.from_numpy(inputs[0])
    padded[1] = torch.from_numpy(inputs[1])
    with torch.no_grad():
        together = stacked(padded)
        for s, x in enumerate(inputs):
            alone = stacked.extract(s)(torch.from_numpy(x))
            torch.testing.assert_close(alone, together[s], rtol=1e-5, atol=1e-5)


def test_each_stacked_link_trains_exactly_as_if_alone():
    """Swapping the other link in the stack must not change this link's weights at all."""
    rng = np.random.default_rng(0)
    x_a = rng.normal(size=(96, 4)).astype(np.float32)
    y = (x_a[:, :1] > 0).astype(np.float32)
    config = TrainConfig(epochs=5, dropout=0.0, seed=3)
    train_idx, val_idx = split_indices(96, 0.25, 0)
    runs = []
    for other in (rng.normal(size=(96, 4)), rng.uniform(size=(96, 4))):
        model, _ = train_stacked(
            [x_a, other.astype(np.float32)], y, "sigmoid", train_idx, val_idx, config
        )
        runs.append(model.extract(0).state_dict())
    for key in runs[0]:
        torch.testing.assert_close(runs[0][key], runs[1][key])


def test_padded_input_weights_never_move():
    rng = np.random.default_rng(1)
    inputs = [
        rng.normal(size=(80, 2)).astype(np.float32),
        rng.normal(size=(80, 6)).astype(np.float32),
    ]
    y = rng.normal(size=(80, 1)).astype(np.float32)
    train_idx, val_idx = split_indices(80, 0.2, 0)
    model, _ = train_stacked(inputs, y, "linear", train_idx, val_idx, TrainConfig(epochs=3))
    assert torch.count_nonzero(model.w1[0, 2:]) == 0


def test_seq_to_vec_link_reads_sequence_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 5, 400)
    specs = {"seq": SequenceSpec(vocab_size=6, max_length=4), "len": VectorSpec(4, "softmax")}
    outputs = {
        "seq": [rng.integers(0, 6, k) for k in lengths],
        "len": [np.eye(4, dtype=np.float32)[k - 1] for k in lengths],
    }
    ls = LinkSet.train(specs, outputs, TrainConfig(epochs=30), progress=False, targets=["len"])
    assert isinstance(ls.links[("seq", "len")], SeqToVecLink)
    assert ("len", "seq") not in ls.links
    score = ls.agreement_oracle(outputs)(frozenset({"seq"}), "len")
    assert score > 0.95


def test_vec_to_seq_and_seq_to_seq_links_reproduce_known_sequences():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 4, 300)
    table = {0: [1], 1: [2, 3], 2: [3, 2, 1], 3: []}
    specs = {
        "cls": VectorSpec(4, "softmax"),
        "seq": SequenceSpec(vocab_size=5, max_length=3),
        "echo": SequenceSpec(vocab_size=5, max_length=3),
    }
    outputs = {
        "cls": [np.eye(4, dtype=np.float32)[c] for c in classes],
        "seq": [np.array(table[c]) for c in classes],
        "echo": [np.array(table[c][::-1]) for c in classes],
    }
    ls = LinkSet.train(specs, outputs, TrainConfig(epochs=40), progress=False)
    assert isinstance(ls.links[("cls", "seq")], VecToSeqLink)
    assert isinstance(ls.links[("seq", "echo")], SeqToSeqLink)
    oracle = ls.agreement_oracle(outputs)
    assert oracle(frozenset({"cls"}), "seq") > 0.95
    assert oracle(frozenset({"seq"}), "echo") > 0.95
    assert oracle(frozenset({"seq"}), "cls") > 0.95


def test_weighted_ensemble_trusts_the_informative_source():
    rng = np.random.default_rng(0)
    digit = rng.integers(0, 10, 600)
    outputs = {
        "digit": [EYE10[d] for d in digit],
        "noise": [EYE10[d] for d in rng.integers(0, 10, 600)],
        "parity": [np.eye(2, dtype=np.float32)[d % 2] for d in digit],
    }
    specs = {
        "digit": VectorSpec(10, "softmax"),
        "noise": VectorSpec(10, "softmax"),
        "parity": VectorSpec(2, "softmax"),
    }
    ls = LinkSet.train(specs, outputs, FAST, progress=False)
    ens = ls.ensembles["parity"]
    assert isinstance(ens, WeightedEnsemble)
    sources = ls.sources_of("parity")
    w = ens.logit_weights.detach()
    assert w[sources.index("digit")] > w[sources.index("noise")]
    oracle = ls.agreement_oracle(outputs)
    both = oracle(frozenset({"digit", "noise"}), "parity")
    assert both >= 0.95
    assert both > oracle(frozenset({"noise"}), "parity") + 0.3


def test_fusion_ensemble_works_for_any_subset():
    _, outputs = digit_outputs(400)
    specs = {
        "digit": VectorSpec(10, "softmax"),
        "parity": VectorSpec(2, "softmax"),
        "third": VectorSpec(1, "count", max_count=3),
    }
    ls = LinkSet.train(specs, outputs, FAST, ensemble="fusion", progress=False)
    oracle = ls.agreement_oracle(outputs)
    assert oracle(frozenset({"digit"}), "parity") > 0.95
    assert oracle(frozenset({"digit", "third"}), "parity") > 0.95


def test_no_active_source_falls_back_to_the_prior():
    _, outputs = digit_outputs(200)
    outputs["third"] = [np.array([0.0], dtype=np.float32)] * 150 + [
        np.array([2.0], dtype=np.float32)
    ] * 50
    specs = {"digit": VectorSpec(10, "softmax"), "third": VectorSpec(1, "count", max_count=3)}
    ls = LinkSet.train(specs, {k: outputs[k] for k in specs}, TrainConfig(epochs=2), progress=False)
    synthesized = ls.synthesize("third", {})
    assert synthesized.tolist() == [[0.0]]  # the modal count


def test_linkset_bundle_round_trip_synthesizes_identically():
    _, outputs = digit_outputs(200)
    specs = {
        "digit": VectorSpec(10, "softmax"),
        "parity": VectorSpec(2, "softmax"),
        "third": VectorSpec(1, "count", max_count=3),
    }
    ls = LinkSet.train(specs, outputs, TrainConfig(epochs=3, ensemble_epochs=3), progress=False)
    tensors, meta = ls.to_bundle()
    again = LinkSet.from_bundle(tensors, meta)
    src = {"digit": outputs["digit"][:20], "third": outputs["third"][:20]}
    np.testing.assert_array_equal(ls.synthesize("parity", src), again.synthesize("parity", src))
    assert again.link_scores == ls.link_scores


def test_synthesized_outputs_are_valid_for_the_target_spec():
    _, outputs = digit_outputs(200)
    specs = {"digit": VectorSpec(10, "softmax"), "third": VectorSpec(1, "count", max_count=3)}
    ls = LinkSet.train(specs, {k: outputs[k] for k in specs}, TrainConfig(epochs=3), progress=False)
    out = ls.synthesize("digit", {"third": outputs["third"][:10]})
    for row in out:
        specs["digit"].validate(row)
    counts = ls.synthesize("third", {"digit": outputs["digit"][:10]})
    assert set(np.unique(counts)) <= {0.0, 1.0, 2.0, 3.0}
    assert agreement(
        specs["third"], counts, encode_batch(specs["third"], outputs["third"][:10])
    ).shape == (10,)


def test_training_rejects_misaligned_outputs():
    _, outputs = digit_outputs(50)
    specs = {"digit": VectorSpec(10, "softmax"), "parity": VectorSpec(2, "softmax")}
    with pytest.raises(ValueError, match="same inputs"):
        LinkSet.train(specs, {"digit": outputs["digit"], "parity": outputs["parity"][:10]})
    with pytest.raises(ValueError, match="not allowed"):
        LinkSet.train({"a/b": specs["digit"], "parity": specs["parity"]}, outputs)


@pytest.mark.parametrize("kind", ["weighted", "fusion"])
def test_numpy_fast_path_matches_the_torch_modules(kind):
    _, outputs = digit_outputs(200)
    specs = {
        "digit": VectorSpec(10, "softmax"),
        "parity": VectorSpec(2, "softmax"),
        "third": VectorSpec(1, "count", max_count=3),
    }
    ls = LinkSet.train(specs, outputs, FAST, ensemble=kind, progress=False)
    enc = {m: encode_batch(specs[m], outputs[m][:50]) for m in specs}
    for target in specs:
        fast = ls.fast_target(target)
        assert fast is not None
        for subset in ({"digit"}, {"parity", "third"}, set(specs) - {target}):
            available = {s: enc[s] for s in subset if s != target}
            if not available:
                continue
            sources = ls.sources_of(target)
            preds = np.zeros((len(sources), 50, specs[target].link_dim), dtype=np.float32)
            for i, s in enumerate(sources):
                if s in available:
                    preds[i] = ls.link_predict(s, target, available[s])
            mask = np.tile(np.array([s in available for s in sources]), (50, 1))
            np.testing.assert_allclose(
                fast(available), ls.combine(target, preds, mask), rtol=1e-4, atol=1e-5
            )
