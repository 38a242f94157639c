"""Property tests: the canonical encoding, RFC 9162 Merkle proofs, and exact payout splits."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import merkle
from protocol.encoding import MAX_SAFE_INTEGER, canonical_bytes, decode, encode_unchecked
from protocol.errors import EncodingError, InclusionProofInvalid, PayoutError
from protocol.payout import split
from protocol.receipts import ReceiptDraft, Use, encode_receipt, fast_receipt, parse_receipt, receipt_body
from protocol.shares import Share

_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
_keys = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=8)
_scalars = st.none() | st.booleans() | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER) | _text
_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4), max_leaves=20
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_values)
def test_canonical_round_trip(value: Any) -> None:
    data = canonical_bytes(value)
    assert decode(data) == value
    assert json.loads(data) == value
    assert encode_unchecked(value) == data  # the verifier's fast path agrees with the checked encoder


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _scalars, max_size=8), st.randoms())
def test_canonical_ignores_insertion_order(value: dict[str, Any], rnd: Any) -> None:
    items = list(value.items())
    rnd.shuffle(items)
    assert canonical_bytes(dict(items)) == canonical_bytes(value)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_values)
def test_decode_of_pretty_json_gives_the_same_canonical_bytes(value: Any) -> None:
    pretty = json.dumps(value, indent=3, ensure_ascii=True)
    assert canonical_bytes(decode(pretty)) == canonical_bytes(value)


def test_rfc8785_string_escapes_and_key_order() -> None:
    value = {"b": "\u20ac$\u000f\nA'B\"\\\\/", "a": [1, -0, True, None], "\u0010": 1}
    assert canonical_bytes(value) == '{"\\u0010":1,"a":[1,0,true,null],"b":"€$\\u000f\\nA\'B\\"\\\\\\\\/"}'.encode()


@pytest.mark.parametrize(
    "bad", [1.5, float("nan"), 2**53, -(2**53), {1: "x"}, {"é": 1}, "\ud800", b"bytes", {"a": {1, 2}}]
)
def test_canonical_refuses_values_outside_the_subset(bad: Any) -> None:
    with pytest.raises(EncodingError):
        canonical_bytes(bad)


@pytest.mark.parametrize("text", ['{"a":1,"a":2}', '{"a":1.0}', "[NaN]", '{"a":', "[1e3]"])
def test_decode_is_strict(text: str) -> None:
    with pytest.raises(EncodingError):
        decode(text)


def _mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return merkle.node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


_leaves = st.lists(st.binary(max_size=16), min_size=1, max_size=70).map(lambda xs: [merkle.leaf_hash(x) for x in xs])


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_leaves)
def test_merkle_root_matches_the_rfc_definition(leaves: list[bytes]) -> None:
    assert merkle.root(leaves) == _mth(leaves)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60)
@given(_leaves, st.data())
def test_every_inclusion_proof_verifies_and_tampering_fails(leaves: list[bytes], data: Any) -> None:
    root = merkle.root(leaves)
    index = data.draw(st.integers(0, len(leaves) - 1))
    proof = merkle.inclusion_proof(index, leaves)
    merkle.verify_inclusion(index, len(leaves), leaves[index], proof, root)
    with pytest.raises(InclusionProofInvalid):
        merkle.verify_inclusion(index, len(leaves), merkle.leaf_hash(b"other"), proof, root)
    if len(leaves) > 1:
        other = (index + 1) % len(leaves)
        if leaves[other] != leaves[index]:
            with pytest.raises(InclusionProofInvalid):
                merkle.verify_inclusion(other, len(leaves), leaves[index], proof, root)
    with pytest.raises(InclusionProofInvalid):
        merkle.verify_inclusion(index, len(leaves), leaves[index], [*proof, b"\x00" * 32], root)


def test_empty_tree_and_index_out_of_range() -> None:
    assert merkle.root([]) == hashlib.sha256(b"").digest()
    with pytest.raises(InclusionProofInvalid):
        merkle.verify_inclusion(3, 3, merkle.leaf_hash(b""), [], merkle.root([]))


_shares = st.lists(st.integers(1, 10_000), min_size=1, max_size=12).filter(lambda xs: sum(xs) <= 10_000)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_shares, st.integers(0, 10**15))
def test_split_is_exact_and_within_one_unit(bps: list[int], total: int) -> None:
    bps = [*bps[:-1], bps[-1] + 10_000 - sum(bps)]
    shares = [Share(f"owner-{i:02d}", b) for i, b in enumerate(bps)]
    parts = split(total, shares)
    assert sum(parts.values()) == total
    for s in shares:
        exact = total * s.bps / 10_000
        assert abs(parts[s.owner] - exact) < 1


def test_split_rounding_rule_example() -> None:
    shares = [Share("a", 3333), Share("b", 3333), Share("c", 3334)]
    assert split(100, shares) == {"a": 33, "b": 33, "c": 34}
    assert split(2, [Share("b", 5000), Share("a", 5000)]) == {"a": 1, "b": 1}
    assert split(1, [Share("b", 5000), Share("a", 5000)]) == {"a": 1, "b": 0}  # tie: lower owner id
    with pytest.raises(PayoutError):
        split(1, [Share("a", 9999)])


_opt_text = st.none() | _text
_uses = st.builds(
    Use,
    kind=st.sampled_from(["analysis", "exposure", "compute", "x-ray_2"]),
    units=st.integers(1, 10**9),
    bundle_id=_opt_text,
    bundle_version=_opt_text,
    output_digest=st.none() | st.just("sha256:" + "ab" * 32),
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _uses,
    st.integers(1, MAX_SAFE_INTEGER),
    st.integers(0, MAX_SAFE_INTEGER),
    _text,
    st.none() | _text,
    st.none() | _text,
    st.data(),
)
def test_one_pass_receipt_encoders_match_the_canonical_encoding(
    use: Use, seq: int, time_ms: int, device: str, right: str | None, study: str | None, data: Any
) -> None:
    overage = data.draw(st.integers(0, use.units))
    fields = {
        "device": device,
        "keyid": "cd" * 32,
        "seq": seq,
        "prev": "ef" * 32,
        "time_ms": time_ms,
        "use": use,
        "overage_units": overage,
        "right_id": right,
        "study_digest": study,
    }
    body = receipt_body(ReceiptDraft(**fields))
    expected = canonical_bytes(body)
    encoded, receipt = encode_receipt(ReceiptDraft(**fields))
    assert encoded == expected
    assert receipt == parse_receipt(body, hashlib.sha256(expected).hexdigest())
    fast = fast_receipt(decode(expected))
    assert fast is not None
    assert fast == (expected, receipt)


@pytest.mark.parametrize(
    "change", [{"extra": 1}, {"seq": True}, {"units": 1.0}, {"type": "settlement"}, {"right": 5}, {"format": 2}]
)
def test_fast_receipt_declines_anything_unusual(change: dict[str, Any]) -> None:
    body = receipt_body(
        ReceiptDraft(device="d", keyid="k", seq=1, prev="p", time_ms=0, use=Use("analysis"), overage_units=0,
                     right_id=None, study_digest=None)
    )  # fmt: skip
    assert fast_receipt(body) is not None
    assert fast_receipt(body | change) is None


_EXPORT: list[tuple[dict[str, Any], Any]] = []


def _valid_export() -> tuple[dict[str, Any], Any]:
    """One small valid export (built once: hypothesis runs the test body many times)."""
    if not _EXPORT:
        import tempfile
        from pathlib import Path

        from protocol.verify import Trust
        from tests.receipts_helpers import make_box

        with tempfile.TemporaryDirectory() as tmp:
            box = make_box(Path(tmp))
            box.record(4)
            box.book.close_batch(box.conn, 3)
            box.record(1)
            _EXPORT.append((box.export(), Trust.of([box.manufacturer.public])))
            box.conn.close()
    return _EXPORT[0]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*prefix, i))
    return out


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=150)
@given(st.data())
def test_any_mutation_of_an_export_is_refused_with_a_verification_error(data: Any) -> None:
    import copy

    from protocol.errors import VerificationError
    from protocol.verify import verify_export

    doc, trust = _valid_export()
    doc = copy.deepcopy(doc)
    # inside one receipt or settlement (dropping the tail of a list is a truncation only a checkpoint can see)
    inside = [p for p in _paths(doc) if len(p) >= 2 and p[0] in ("receipts", "settlements")]
    path = data.draw(st.sampled_from(inside))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(_values)
    try:
        verify_export(doc, trust)
    except (VerificationError, EncodingError):
        return
    original, _ = _valid_export()
    assert canonical_bytes(doc) == canonical_bytes(original)  # only a no-op mutation may pass
