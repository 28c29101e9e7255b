"""Agreement metrics and output specs on cases with known answers (no broker)."""

import numpy as np
import pytest

from mlink.linkstore.metrics import agreement, box_agreement, box_iou, word_error_rate
from mlink.topics.specs import (
    BoxesSpec,
    SequenceSpec,
    SpecError,
    VectorSpec,
    encode_batch,
    spec_from_dict,
)


def test_softmax_agreement_is_top1_match():
    spec = VectorSpec(3, "softmax")
    pred = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
    true = np.array([[0.5, 0.4, 0.1], [0.6, 0.3, 0.1], [0.0, 1.0, 0.0]])
    assert agreement(spec, pred, true).tolist() == [1.0, 0.0, 1.0]


def test_sigmoid_agreement_is_per_sample_f1_and_empty_sets_agree():
    spec = VectorSpec(4, "sigmoid")
    pred = np.array([[0.9, 0.9, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1], [0.9, 0.1, 0.1, 0.1]])
    true = np.array([[0.9, 0.1, 0.1, 0.1], [0.0, 0.0, 0.0, 0.0], [0.0, 0.9, 0.0, 0.0]])
    np.testing.assert_allclose(agreement(spec, pred, true), [2 / 3, 1.0, 0.0])


def test_count_agreement_is_abs_error_below_half_after_rounding():
    spec = VectorSpec(1, "count", max_count=10)
    pred = np.array([[2.4], [2.6], [0.0]])
    true = np.array([[2.0], [2.0], [1.0]])
    assert agreement(spec, pred, true).tolist() == [1.0, 0.0, 0.0]


def test_linear_agreement_is_share_of_elements_within_tolerance():
    spec = VectorSpec(2, "linear", tolerance=0.5)
    pred = np.array([[1.0, 5.0]])
    true = np.array([[1.4, 3.0]])
    assert agreement(spec, pred, true).tolist() == [0.5]


def test_box_iou_and_matched_agreement():
    a = np.array([[0.0, 0.0, 0.5, 0.5, 1.0]])
    b = np.array([[0.0, 0.0, 0.5, 0.25, 1.0], [0.6, 0.6, 0.9, 0.9, 0.5]])
    np.testing.assert_allclose(box_iou(a, b), [[0.5, 0.0]])
    # one match of IoU 0.5, one extra box: 0.5 / 2
    assert box_agreement(a, b) == pytest.approx(0.25)
    assert box_agreement(np.zeros((0, 5)), np.zeros((0, 5))) == 1.0
    assert box_agreement(a, np.zeros((0, 5))) == 0.0


def test_the_same_zero_area_box_from_both_models_agrees_and_a_different_one_does_not():
    point = np.array([[0.2, 0.3, 0.2, 0.3, 1.0]])  # a landmark, or a box clipped to nothing
    edge = np.array([[1.0, 0.1, 1.0, 0.4, 0.9]])
    assert box_agreement(point, point) == 1.0
    assert box_agreement(np.vstack([point, edge]), np.vstack([edge, point])) == 1.0
    assert box_agreement(point, edge) == 0.0
    assert box_agreement(point, np.array([[0.2, 0.3, 0.21, 0.3, 1.0]])) == 0.0


def test_word_error_rate_counts_edits_over_reference_length():
    assert word_error_rate([1, 2, 3], [1, 2, 3]) == 0.0
    assert word_error_rate([1, 3], [1, 2, 3]) == pytest.approx(1 / 3)
    assert word_error_rate([], []) == 0.0
    spec = SequenceSpec(10, 5)
    np.testing.assert_allclose(
        agreement(spec, [[1, 3], [9, 9, 9, 9]], [[1, 2, 3], [1]]), [2 / 3, 0]
    )


def test_vector_spec_rejects_bad_outputs_with_the_reason():
    spec = VectorSpec(3, "softmax")
    with pytest.raises(SpecError, match="expected shape"):
        spec.validate(np.ones(4) / 4)
    with pytest.raises(SpecError, match="sum to"):
        spec.validate(np.array([0.5, 0.5, 0.5]))
    with pytest.raises(SpecError, match="NaN"):
        spec.validate(np.array([np.nan, 0.5, 0.5]))
    with pytest.raises(SpecError, match="non-negative integers"):
        VectorSpec(1, "count", max_count=3).validate(np.array([1.5]))
    with pytest.raises(SpecError, match="max_count"):
        VectorSpec(1, "count")


def test_boxes_spec_encodes_count_and_top_k_by_score():
    spec = BoxesSpec(max_boxes=2)
    boxes = np.array(
        [[0.1, 0.1, 0.2, 0.2, 0.3], [0.5, 0.5, 0.9, 0.9, 0.9], [0.0, 0.0, 1.0, 1.0, 0.6]]
    )
    vec = spec.encode(boxes)
    assert vec.shape == (11,)
    assert vec[0] == 3
    np.testing.assert_allclose(vec[1:6], boxes[1])
    np.testing.assert_allclose(vec[6:11], boxes[2])
    np.testing.assert_allclose(spec.decode(vec), boxes[[1, 2]])
    with pytest.raises(SpecError, match="normalised"):
        spec.validate(np.array([[0, 0, 50, 50, 1.0]]))


def test_sequence_spec_pads_and_decodes_up_to_the_first_pad():
    spec = SequenceSpec(vocab_size=5, max_length=4)
    vec = spec.encode([3, 1])
    assert vec.tolist() == [3, 1, 5, 5]
    assert spec.decode(vec).tolist() == [3, 1]
    with pytest.raises(SpecError, match="token ids"):
        spec.validate([7])


def test_spec_round_trips_through_dict_and_encode_batch_shapes():
    for spec in [VectorSpec(3, "sigmoid"), BoxesSpec(4), SequenceSpec(9, 6)]:
        assert spec_from_dict(spec.to_dict()) == spec
    assert encode_batch(BoxesSpec(3), [np.zeros((0, 5))] * 2).shape == (2, 16)
    with pytest.raises(SpecError, match="unknown"):
        spec_from_dict({"kind": "image"})
