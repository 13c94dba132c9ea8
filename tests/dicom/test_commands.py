"""dicom.commands and the storage lane's file meta: the bytes pynetdicom and pydicom would make."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.filewriter import write_file_meta_info
from pynetdicom.dimse_messages import C_ECHO_RSP, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta, decode, encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from dicom import commands
from dicom.commands import CommandError
from dicom.lane import file_meta

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize("uid", ["1.2.3.4", "1.2.3.45"])  # odd and even lengths (UI padding)
@pytest.mark.parametrize("comment", [None, "the dataset cannot be read", "odd"])
def test_a_c_store_response_is_the_one_pynetdicom_encodes(uid: str, comment: str | None) -> None:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = 7
    response.AffectedSOPClassUID, response.AffectedSOPInstanceUID = CT, uid
    response.Status = 0xC000 if comment else 0x0000
    if comment:
        response.ErrorComment = comment
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    theirs = encode(message.command_set, True, True)
    assert commands.c_store_rsp(CT, uid, 7, response.Status, comment) == theirs


def test_a_c_echo_response_is_the_one_pynetdicom_encodes() -> None:
    response = C_ECHO()
    response.MessageIDBeingRespondedTo = 65535
    response.AffectedSOPClassUID = "1.2.840.10008.1.1"
    response.Status = 0x0000
    message = C_ECHO_RSP()
    message.primitive_to_message(response)
    theirs = encode(message.command_set, True, True)
    assert commands.c_echo_rsp("1.2.840.10008.1.1", 65535) == theirs


def test_a_command_set_reads_back_as_pydicom_reads_it() -> None:
    raw = commands.c_store_rq(CT, "1.2.3.45", 513, 2)
    ours = commands.parse(raw)
    theirs = decode(BytesIO(raw), True, True)
    assert commands.read_us(ours, commands.COMMAND_FIELD) == theirs.CommandField == 0x0001
    assert commands.read_us(ours, commands.MESSAGE_ID) == theirs.MessageID == 513
    assert commands.read_uid(ours, commands.AFFECTED_SOP_INSTANCE) == "1.2.3.45"
    assert commands.read_uid(ours, commands.AFFECTED_SOP_CLASS) == theirs.AffectedSOPClassUID


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x00\x00",  # ends inside an element header
        commands.c_store_rq(CT, "1.2", 1, 2)[:-1],  # the last value cut short
        b"\x08\x00\x18\x00\x02\x00\x00\x001\x00",  # (0008,0018): not group 0000
    ],
)
def test_a_broken_command_set_is_refused(raw: bytes) -> None:
    with pytest.raises(CommandError):
        commands.parse(raw)


def test_a_missing_element_is_named() -> None:
    elements = commands.parse(commands.c_echo_rsp("1.2.840.10008.1.1", 1))
    with pytest.raises(CommandError, match=r"\(0000,0110\)"):
        commands.read_us(elements, commands.MESSAGE_ID)
    with pytest.raises(CommandError, match=r"\(0000,1000\)"):
        commands.read_uid(elements, commands.AFFECTED_SOP_INSTANCE)


def test_a_p_data_tf_pdu_is_the_one_pynetdicom_encodes() -> None:
    data = commands.c_echo_rsp("1.2.840.10008.1.1", 3)
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[5, bytes([0x03]) + data]]  # last command fragment
    theirs = P_DATA_TF(primitive).encode()
    assert commands.p_data_tf(5, commands.COMMAND | commands.LAST, data) == theirs


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50"])
@pytest.mark.parametrize("uid", ["1.2.3.4", "1.2.3.45"])
def test_the_lanes_file_meta_is_the_one_pynetdicom_writes(syntax: str, uid: str) -> None:
    out = BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(
        out,  # type: ignore[arg-type]
        create_file_meta(sop_class_uid=CT, sop_instance_uid=uid, transfer_syntax=syntax),
    )
    assert file_meta(CT, uid, syntax) == out.getvalue()
