"""The zero-copy P-DATA-TF decoding agrees with pynetdicom's own."""

from __future__ import annotations

from typing import Any

from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from edge.ingest.transport import pdv_items


def test_pdv_items_match_pynetdicoms_decoding() -> None:
    primitive = P_DATA()
    pdvs: list[Any] = [  # lists, as pynetdicom checks at run time (its annotation says tuples)
        [1, b"\x03" + b"command set"],
        [3, b"\x00" + bytes(range(256)) * 40],
        [3, b"\x02"],  # an empty last fragment
    ]
    primitive.presentation_data_value_list = pdvs
    encoded = P_DATA_TF(primitive).encode()
    expected = P_DATA_TF()
    expected.decode(encoded)
    ours = pdv_items(bytearray(encoded[6:]))
    assert [(i.presentation_context_id, bytes(i.presentation_data_value or b"")) for i in ours] == [
        (i.presentation_context_id, i.presentation_data_value) for i in expected.presentation_data_value_items
    ]
    assert all(isinstance(i.presentation_data_value, memoryview) for i in ours)
