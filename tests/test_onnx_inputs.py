"""Running an exported file: lampc's session checks its inputs by name and fills the attention mask, while the raw
onnxruntime.InferenceSession stays usable as before; the file says it has no KV cache and which inputs it needs.

Oracles: a plain onnxruntime.InferenceSession on the same file (fed the mask explicitly) and the PyTorch compiled
model's logits. A tiny GPT-2 with a 64-entry position table, so "past the table" is cheap to reach.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import lampc
from lampc.export import describe_onnx, export_onnx, make_session, run_session
from tiny_models import tiny_gpt2

pytestmark = pytest.mark.slow  # exports a (tiny) model

MAX_LEN, VOCAB = 64, 97  # tiny_gpt2: n_positions=64, vocab_size=97
CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(compiled model, path of its ONNX export), once per module."""
    compiled = lampc.compile(tiny_gpt2(score_gain=6.0), format="m4", criterion="strict", tau=0.1)
    path = str(tmp_path_factory.mktemp("onnx-inputs") / "gpt2.onnx")
    export_onnx(compiled, path)
    return compiled, path


@pytest.fixture(scope="module")
def session(exported):
    return make_session(exported[1], providers=CPU)


@pytest.fixture(scope="module")
def plain(exported):
    """The oracle: ONNX Runtime's own session, no lampc code in between."""
    return ort.InferenceSession(exported[1], providers=CPU)


def _ids(batch, seq, seed=1):
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, seq)).astype(np.int64)


def _torch_logits(compiled, ids, mask=None):
    with torch.no_grad():
        out = compiled(torch.from_numpy(ids), None if mask is None else torch.from_numpy(mask))
    return out.logits.numpy()


def test_attention_mask_is_optional_and_means_all_ones(exported, session, plain):
    """ORT requires attention_mask; lampc's run fills ones, as the PyTorch model does without a mask."""
    compiled, _ = exported
    ids = _ids(2, 12)
    with pytest.raises(ValueError, match="attention_mask"):  # what ORT alone says: the input is required
        plain.run(None, {"input_ids": ids})
    want = plain.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    assert np.array_equal(run_session(session, ids)["logits"], want)
    assert np.array_equal(session(ids)["logits"], want)  # the session itself is callable
    assert np.abs(want - _torch_logits(compiled, ids)).max() <= 1e-5


def test_a_padded_batch_equals_the_plain_session_and_pytorch(exported, session, plain):
    compiled, _ = exported
    ids = _ids(2, 10)
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    want = plain.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
    got = session(torch.from_numpy(ids), torch.from_numpy(mask))["logits"]
    assert np.array_equal(got, want)
    assert np.abs(got - _torch_logits(compiled, ids, mask)).max() <= 1e-5


def test_the_raw_session_is_still_an_inference_session(exported, session, plain):
    ids = _ids(1, 8)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    assert isinstance(session, ort.InferenceSession)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert np.array_equal(session.run(None, feed)[0], plain.run(None, feed)[0])
    assert session.max_len == MAX_LEN and session.vocab_size == VOCAB


def test_a_sequence_past_the_position_table_is_refused_by_name(exported, session, plain):
    compiled, _ = exported
    long = _ids(1, MAX_LEN + 6)
    with pytest.raises(Exception, match="Gather"):  # ORT's own message: an index deep in the graph
        plain.run(None, {"input_ids": long, "attention_mask": np.ones_like(long)})
    with pytest.raises(ValueError, match=r"input_ids: sequence length 70 is past the model's 64 positions .*no KV "
                                         r"cache"):
        session(long)
    with pytest.raises(ValueError, match=r"input_ids: sequence length 70 is past the model's 64 positions"):
        run_session(plain, long)  # the helper reads the limit from any session on a lampc file
    for seq in (1, MAX_LEN):  # one token (PyTorch: the cached-step graph) up to the whole table are fine
        ids = _ids(1, seq)
        assert np.abs(session(ids)["logits"] - _torch_logits(compiled, ids)).max() <= 1e-5


@pytest.mark.parametrize("shape", [(2, 7), (1, 10), (2, 10, 1), (10,)])
def test_a_mask_of_the_wrong_shape_names_both_shapes(session, plain, shape):
    ids = _ids(2, 10)
    mask = np.ones(shape, dtype=np.int64)
    with pytest.raises(Exception):  # ORT alone fails inside a Reshape, or on the rank
        plain.run(None, {"input_ids": ids, "attention_mask": mask})
    with pytest.raises(ValueError, match=rf"attention_mask must have the shape of input_ids \(2, 10\), got "
                                         rf"{re_shape(shape)}"):
        session(ids, mask)


def re_shape(shape) -> str:
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


def test_token_ids_outside_the_vocabulary_are_refused(session, plain):
    ids = _ids(1, 6)
    negative = ids.copy()
    negative[0, 2] = -1
    feed = {"input_ids": negative, "attention_mask": np.ones_like(ids)}
    assert np.isfinite(plain.run(None, feed)[0]).all()  # ORT alone: silently the last row of the embedding
    for bad in (negative, np.full_like(ids, VOCAB)):
        with pytest.raises(ValueError, match=rf"input_ids: token ids must be in \[0, {VOCAB}\), got \["):
            session(bad)


def test_mask_values_other_than_0_and_1_are_refused(session, plain):
    ids = _ids(1, 6)
    mask = np.ones_like(ids)
    mask[0, 0] = 2
    assert np.isfinite(plain.run(None, {"input_ids": ids, "attention_mask": mask})[0]).all()  # ORT: silent
    with pytest.raises(ValueError, match=r"attention_mask must contain only 0 \(padding\) and 1 \(token\), got 2"):
        session(ids, mask)
    with pytest.raises(TypeError, match="attention_mask must be an integer array .* got dtype bool"):
        session(ids, mask.astype(bool))


def test_empty_inputs_and_unknown_outputs_are_refused(session):
    with pytest.raises(ValueError, match=r"input_ids: a batch of 0 sequences"):
        session(np.zeros((0, 5), dtype=np.int64))
    with pytest.raises(ValueError, match=r"input_ids: sequence length 0; .* at least 1"):
        session(np.zeros((1, 0), dtype=np.int64))
    with pytest.raises(ValueError, match=r"outputs: 'nope' is not an output of this model \(it has: logits\)"):
        session(_ids(1, 4), outputs=["nope"])


def test_an_empty_outputs_list_is_refused_not_answered_with_nothing(session, plain):
    assert len(plain.run([], {"input_ids": _ids(1, 4), "attention_mask": np.ones((1, 4), np.int64)})) == 1  # ORT
    with pytest.raises(ValueError, match=r"outputs: an empty list names no output; .*None for all \(it has: logits\)"):
        session(_ids(1, 4), outputs=[])
    with pytest.raises(ValueError, match=r"outputs: an empty list"):
        run_session(plain, _ids(1, 4), outputs=[])


def test_the_file_states_it_has_no_kv_cache_and_which_inputs_it_needs(exported):
    _, path = exported
    meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    assert meta["lampc.kv_cache"].startswith("none")
    assert "attention_mask" in meta["lampc.inputs"] and f"seq <= {MAX_LEN}" in meta["lampc.inputs"]
    text = describe_onnx(path)
    assert "no KV cache" in text and "full-sequence forward" in text
    assert "needs input_ids and attention_mask" in text and f"seq <= {MAX_LEN}" in text
