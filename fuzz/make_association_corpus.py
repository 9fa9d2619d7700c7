#!/usr/bin/env python3
"""Writes fuzz/corpus/association/: what a peer sends on one connection, byte for byte.

Each seed is an A-ASSOCIATE-RQ followed by the PDUs of an association (P-DATA-TF with C-ECHO
or a fragmented C-STORE, A-RELEASE-RQ, A-ABORT), plus a few malformed ones (a declared 4 GiB
P-DATA-TF, a truncated request, user-information sub-items of every kind). No dependencies;
reruns give the same bytes.
"""
import struct
from pathlib import Path

CT = b"1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = b"1.2.840.10008.1.1"
EXPLICIT = b"1.2.840.10008.1.2.1"
IMPLICIT = b"1.2.840.10008.1.2"


def item(kind, body):
    return bytes([kind, 0]) + struct.pack(">H", len(body)) + body


def pdu(kind, body):
    return bytes([kind, 0]) + struct.pack(">I", len(body)) + body


def ae(s):
    return s.encode().ljust(16)


def associate_rq(contexts, extra_user=b""):
    body = b"\x00\x01\x00\x00" + ae("CACD") + ae("CT01") + bytes(32)
    body += item(0x10, b"1.2.840.10008.3.1.1.1")
    for pc_id, abstract, syntaxes in contexts:
        pc = bytes([pc_id, 0, 0, 0]) + item(0x30, abstract)
        for ts in syntaxes:
            pc += item(0x40, ts)
        body += item(0x20, pc)
    user = item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.826.0.1.3680043.10.1")
    user += item(0x55, b"FUZZ") + extra_user
    body += item(0x50, user)
    return pdu(0x01, body)


def p_data(pc, command, last, data):
    pdv = struct.pack(">I", len(data) + 2) + bytes([pc, int(command) | (int(last) << 1)]) + data
    return pdu(0x04, pdv)


def el(group, elem, value):
    return struct.pack("<HHI", group, elem, len(value)) + value


def pad(uid):
    return uid + b"\x00" if len(uid) % 2 else uid


def command(fields):
    rest = b"".join(fields)
    return el(0, 0, struct.pack("<I", len(rest))) + rest


def c_echo():
    return command([el(0, 0x0002, pad(VERIFICATION)), el(0, 0x0100, struct.pack("<H", 0x30)),
                    el(0, 0x0110, struct.pack("<H", 1)), el(0, 0x0800, struct.pack("<H", 0x0101))])


def c_store(sop):
    return command([el(0, 0x0002, pad(CT)), el(0, 0x0100, struct.pack("<H", 1)),
                    el(0, 0x0110, struct.pack("<H", 7)), el(0, 0x0700, struct.pack("<H", 0)),
                    el(0, 0x0800, struct.pack("<H", 0)), el(0, 0x1000, pad(sop))])


def explicit(group, elem, vr, value):
    return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value


def main():
    out = Path(__file__).resolve().parent / "corpus" / "association"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    rq = associate_rq([(1, CT, [EXPLICIT, IMPLICIT]), (3, VERIFICATION, [IMPLICIT])])
    release = pdu(0x05, bytes(4))
    abort = pdu(0x07, bytes([0, 0, 0, 0]))
    dataset = (explicit(0x0008, 0x0016, b"UI", pad(CT)) + explicit(0x0008, 0x0018, b"UI", pad(b"1.2.3.4.5"))
               + explicit(0x0020, 0x000D, b"UI", pad(b"1.2.3")) + explicit(0x0020, 0x000E, b"UI", pad(b"1.2.3.4")))
    store = c_store(b"1.2.3.4.5")
    seeds = {
        "echo_release": rq + p_data(3, True, True, c_echo()) + release,
        "store_fragments": rq + p_data(1, True, False, store[:20]) + p_data(1, True, True, store[20:])
        + p_data(1, False, False, dataset[:10]) + p_data(1, False, False, dataset[10:40])
        + p_data(1, False, True, dataset[40:]) + release,
        "two_pdvs_one_pdu": rq + pdu(0x04, p_data(3, True, True, c_echo())[6:] * 2) + abort,
        "abort": rq + abort,
        "p_data_4gib": rq + bytes([4, 0, 0xFF, 0xFF, 0xFF, 0xFF]) + bytes(64),
        "truncated_rq": rq[: len(rq) // 2],
        "many_contexts": associate_rq([(2 * i + 1, CT, [EXPLICIT, IMPLICIT]) for i in range(40)]),
        "user_subitems": associate_rq(
            [(1, CT, [EXPLICIT])],
            item(0x53, struct.pack(">HH", 1, 1)) + item(0x54, struct.pack(">H", len(CT)) + CT + b"\x01\x01")
            + item(0x56, struct.pack(">H", len(CT)) + CT + b"\x01\x00")
            + item(0x58, b"\x01\x00" + struct.pack(">H", 4) + b"user" + struct.pack(">H", 0))),
    }
    for name, data in seeds.items():
        (out / name).write_bytes(data)
    files = sorted(out.iterdir())
    print(f"corpus/association: {len(files)} seeds, largest {max(f.stat().st_size for f in files)} bytes")


if __name__ == "__main__":
    main()
