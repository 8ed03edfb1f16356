"""QUIC Initial decryption: RFC 9001 / RFC 9369 test vectors, real captures, bounds, fuzz."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.collectors.quic import (
    QUIC_V1,
    QUIC_V2,
    QuicInitialTracker,
    _decode_pn,
    derive_initial_keys,
    is_quic_long_header_initial,
)
from monitor.collectors.quic_versions import INITIAL_VERSIONS
from monitor.collectors.tls import parse_client_hello
from tests.test_tls import check_hello

SHARED = Path(__file__).resolve().parents[2] / "shared"
PCAP = SHARED / "conformance" / "pcap"
RFC_DCID = bytes.fromhex("8394c8f03e515708")

# --- RFC 9001 Appendix A / RFC 9369 Appendix A (the same ClientHello for example.com) -----
RFC9001_CLIENT_INITIAL = bytes.fromhex(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934"
)
RFC9369_CLIENT_INITIAL = bytes.fromhex(
    "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485"
    "dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04"
    "9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d"
    "250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a"
    "12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500"
    "cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68"
    "18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33"
    "12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3"
    "d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd"
    "6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520"
    "bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045"
    "636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f"
    "ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12"
    "16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5"
    "4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4"
    "fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b"
    "8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7"
    "14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9"
    "9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91"
    "abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd"
    "80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db"
    "848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18"
    "d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15"
    "c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc"
    "7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61"
    "f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710"
    "10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b"
    "3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e"
    "06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce"
    "8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1"
    "34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1"
    "e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd"
    "5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3"
    "8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89"
    "d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53"
    "6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19"
    "9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b"
    "a18b2faa745b6fe189cf772a9f84cbfc"
)
# RFC 9001 A.2 / RFC 9369 A.2: the unprotected payload (CRYPTO frame, then 917 bytes of PADDING)
RFC_CLIENT_PAYLOAD = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
) + bytes(917)
# RFC 9001 A.3: the server's Initial (DCID empty, SCID f067a5502a4262b5)
RFC9001_SERVER_INITIAL = bytes.fromhex(
    "cf000000010008f067a5502a4262b5004075c0d95a482cd0991cd25b0aac406a"
    "5816b6394100f37a1c69797554780bb38cc5a99f5ede4cf73c3ec2493a1839b3"
    "dbcba3f6ea46c5b7684df3548e7ddeb9c3bf9c73cc3f3bded74b562bfb19fb84"
    "022f8ef4cdd93795d77d06edbb7aaf2f58891850abbdca3d20398c276456cbc4"
    "2158407dd074ee"
)
RFC_CLIENT_HELLO = RFC_CLIENT_PAYLOAD[4 : 4 + 0xF1]


# --- a test-only packet builder (checked against the RFC bytes below) --------------------


def _varint(v: int) -> bytes:
    if v < 0x40:
        return bytes((v,))
    if v < 0x4000:
        return (0x4000 | v).to_bytes(2, "big")
    if v < 0x40000000:
        return (0x80000000 | v).to_bytes(4, "big")
    return (0xC000000000000000 | v).to_bytes(8, "big")


def protect(
    payload: bytes,
    *,
    dcid: bytes = RFC_DCID,
    scid: bytes = b"",
    pn: int = 0,
    pn_len: int = 4,
    version: int = QUIC_V1,
    ptype: int | None = None,
    token: bytes = b"",
    keys_dcid: bytes | None = None,
) -> bytes:
    """Build a protected client long-header packet (Initial unless ``ptype`` says otherwise)."""
    key, iv, hp = derive_initial_keys(keys_dcid or dcid, version)
    initial = INITIAL_VERSIONS[version][3]  # the long-header type bits of an Initial
    if ptype is None:
        ptype = initial
    is_initial = ptype == initial
    b0 = 0xC0 | ptype << 4 | (pn_len - 1)
    header = bytes((b0,)) + version.to_bytes(4, "big")
    header += bytes((len(dcid),)) + dcid + bytes((len(scid),)) + scid
    if is_initial:
        header += _varint(len(token)) + token
    length = pn_len + len(payload) + 16
    header += (0x4000 | length).to_bytes(2, "big")
    pn_off = len(header)
    header += (pn & ((1 << (8 * pn_len)) - 1)).to_bytes(pn_len, "big")
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    ct = AESGCM(key).encrypt(nonce, payload, header)
    sample = ct[4 - pn_len : 20 - pn_len]
    mask = Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update(sample)
    out = bytearray(header + ct)
    out[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        out[pn_off + i] ^= mask[1 + i]
    return bytes(out)


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + _varint(offset) + _varint(len(data)) + data


def padded(frames: bytes, size: int = 1162) -> bytes:
    return frames + bytes(max(0, size - len(frames)))


# --- RFC vectors --------------------------------------------------------------------------


def test_rfc9001_initial_keys():
    key, iv, hp = derive_initial_keys(RFC_DCID, QUIC_V1)
    assert key == bytes.fromhex("1f369613dd76d5467730efcbe3b1a22d")
    assert iv == bytes.fromhex("fa044b2f42a3fd3b46fb255c")
    assert hp == bytes.fromhex("9f50449e04a0e810283a1e9933adedd2")


def test_rfc9369_initial_keys():
    key, iv, hp = derive_initial_keys(RFC_DCID, QUIC_V2)
    assert key == bytes.fromhex("8b1a0bc121284290a29e0971b5cd045d")
    assert iv == bytes.fromhex("91f73e2351d8fa91660e909f")
    assert hp == bytes.fromhex("45b95e15235d6f45a6b19cbcb0294ba9")


@pytest.mark.parametrize(
    "packet,version", [(RFC9001_CLIENT_INITIAL, QUIC_V1), (RFC9369_CLIENT_INITIAL, QUIC_V2)]
)
def test_rfc_client_initial_decrypts_to_example_com(packet, version):
    assert is_quic_long_header_initial(packet)
    tracker = QuicInitialTracker()
    info = tracker.feed(packet, "flow")
    assert info == parse_client_hello(RFC_CLIENT_HELLO)
    assert info.sni == "example.com"
    assert info.versions == (0x0304,)
    assert info.alpn == ("alpn",)
    assert info.legacy_version == 0x0303
    assert not info.ech
    assert tracker.client_hellos == 1 and tracker.decrypted == 1
    assert tracker.errors == 0 and tracker.decrypt_failures == 0
    assert len(tracker) == 0  # not tracked any more
    # The builder used by the other tests reproduces the RFC bytes exactly.
    assert protect(RFC_CLIENT_PAYLOAD, pn=2, version=version) == packet


def test_rfc_packet_number_decoding_example():
    # RFC 9000 Appendix A.3
    assert _decode_pn(0xA82F30EA, 0x9B32, 16) == 0xA82F9B32
    assert _decode_pn(-1, 0, 8) == 0
    assert _decode_pn(0xFF, 0x01, 8) == 0x101


def test_corrupted_packet_is_not_decrypted():
    for i in (30, 600, 1199):
        bad = bytearray(RFC9001_CLIENT_INITIAL)
        bad[i] ^= 0x01
        tracker = QuicInitialTracker()
        assert tracker.feed(bytes(bad), "f") is None
        assert tracker.decrypt_failures == 1 and tracker.errors == 0


def test_is_quic_long_header_initial():
    assert is_quic_long_header_initial(RFC9369_CLIENT_INITIAL)
    v1_type_bits_in_v2 = bytes((RFC9369_CLIENT_INITIAL[0] & 0xCF,)) + RFC9369_CLIENT_INITIAL[1:]
    assert not is_quic_long_header_initial(v1_type_bits_in_v2)  # in v2, type bits 00 = Retry
    assert not is_quic_long_header_initial(b"")
    assert not is_quic_long_header_initial(b"\x40" + bytes(30))  # short header
    assert not is_quic_long_header_initial(b"\xc0\x00\x00\x00\x00" + bytes(30))  # version nego
    assert not is_quic_long_header_initial(b"\xe0\x00\x00\x00\x01" + bytes(30))  # Handshake
    assert is_quic_long_header_initial(b"\xc0\xff\x00\x00\x1d" + bytes(30))  # draft-29: read
    assert not is_quic_long_header_initial(b"\xc0\x1a\x2a\x3a\x4a" + bytes(30))  # unknown
    assert not is_quic_long_header_initial(None)  # type: ignore[arg-type]


# --- reassembly, coalescing, flows ----------------------------------------------------------


def test_crypto_reassembled_across_packets_datagrams_and_order():
    ch = RFC_CLIENT_HELLO
    cuts = [0, 1, 3, 4, 50, 51, 120, 200, len(ch)]
    pieces = [(a, ch[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    rng = random.Random(7)
    for trial in range(20):
        rng.shuffle(pieces)
        tracker = QuicInitialTracker()
        results = []
        # two pieces per packet, packets alternately alone or coalesced in pairs
        packets = [
            protect(padded(b"".join(crypto_frame(o, d) for o, d in pieces[i : i + 2]), 300), pn=k)
            for k, i in enumerate(range(0, len(pieces), 2))
        ]
        datagrams = []
        for k in range(0, len(packets), 2):
            if trial % 2:
                datagrams.append(b"".join(packets[k : k + 2]))
            else:
                datagrams.extend(packets[k : k + 2])
        for dg in datagrams:
            results.append(tracker.feed(dg, ("10.0.0.1", 5000, "10.0.0.2", 443)))
        assert all(r is None for r in results[:-1])
        assert results[-1] is not None and results[-1].sni == "example.com"
        assert tracker.client_hellos == 1 and tracker.errors == 0


def test_overlapping_and_duplicate_crypto_fragments():
    ch = RFC_CLIENT_HELLO
    frames = crypto_frame(100, ch[100:]) + crypto_frame(0, ch[:60]) + crypto_frame(40, ch[40:120])
    tracker = QuicInitialTracker()
    first = protect(padded(crypto_frame(100, ch[100:])), pn=0)
    assert tracker.feed(first, 1) is None
    assert tracker.feed(first, 1) is None  # retransmitted
    info = tracker.feed(protect(padded(frames), pn=1), 1)
    assert info is not None and info.sni == "example.com"


def test_other_frames_and_packet_types_are_skipped():
    ch = RFC_CLIENT_HELLO
    frames = (
        b"\x01"  # PING
        + b"\x02\x05\x00\x01\x00\x01\x01"  # ACK, 1 extra range
        + b"\x03\x05\x00\x00\x00\x01\x02\x03"  # ACK with ECN counts
        + bytes(40)  # PADDING run
        + crypto_frame(0, ch[:100])
        + b"\x00\x01\x00"
        + crypto_frame(100, ch[100:])
    )
    handshake = protect(padded(b"\x01", 40), ptype=2)  # a Handshake packet (different keys)
    zero_rtt = protect(padded(b"\x01", 40), ptype=1)
    initial = protect(padded(frames, 600))
    tracker = QuicInitialTracker()
    dg = handshake + zero_rtt + initial + b"\x40" + bytes(30)  # ... then a short header
    info = tracker.feed(dg, "f")
    assert info is not None and info.sni == "example.com"
    assert tracker.initial_packets == 1 and tracker.errors == 0


def test_frames_not_allowed_in_initial_stop_the_packet():
    ch = RFC_CLIENT_HELLO
    frames = crypto_frame(0, ch[:100]) + b"\x08\x00" + crypto_frame(100, ch[100:])  # STREAM
    tracker = QuicInitialTracker()
    assert tracker.feed(protect(padded(frames)), "f") is None
    assert tracker.tracking("f")
    info = tracker.feed(protect(padded(crypto_frame(100, ch[100:])), pn=1), "f")
    assert info is not None and info.sni == "example.com"


def test_v2_multi_packet():
    ch = RFC_CLIENT_HELLO
    tracker = QuicInitialTracker()
    assert tracker.feed(protect(padded(crypto_frame(0, ch[:77])), version=QUIC_V2), 9) is None
    info = tracker.feed(protect(padded(crypto_frame(77, ch[77:])), pn=1, version=QUIC_V2), 9)
    assert info is not None and info.sni == "example.com"


def test_server_packets_and_retransmissions_are_ignored():
    tracker = QuicInitialTracker()
    ch = RFC_CLIENT_HELLO
    key = ("c", 1, "s", 443)
    assert tracker.feed(protect(padded(crypto_frame(0, ch[:90])), scid=b"\x11" * 8), key) is None
    # the server's Initial (RFC 9001 A.3) on the same flow key: not decrypted with client keys
    srv = protect(padded(b"\x01", 100), dcid=b"\x11" * 8, scid=b"\x22" * 8, keys_dcid=b"\x99" * 8)
    assert tracker.feed(srv, key) is None
    assert tracker.decrypt_failures == 0  # recognised as a server packet, not tried
    info = tracker.feed(protect(padded(crypto_frame(90, ch[90:])), pn=1, scid=b"\x11" * 8), key)
    assert info is not None and info.sni == "example.com"
    # retransmission of the whole first flight: no second report, not even a decrypt attempt
    assert tracker.feed(RFC9001_CLIENT_INITIAL, key) is None
    assert tracker.client_hellos == 1 and tracker.initial_packets == 2
    # the client's later Initial ACK goes to the server's CID: one failed try, then skipped
    ack = protect(padded(b"\x02\x00\x00\x00\x00"), dcid=b"\x33" * 8, keys_dcid=RFC_DCID, pn=2)
    assert tracker.feed(ack, key) is None and tracker.feed(ack, key) is None
    assert tracker.decrypt_failures == 1
    # a new connection on the same 5-tuple (new random DCID) is reported
    again = protect(padded(crypto_frame(0, ch)), dcid=b"\x44" * 8)
    assert tracker.feed(again, key).sni == "example.com"
    assert tracker.client_hellos == 2 and tracker.errors == 0


def test_rfc_server_initial_is_ignored():
    tracker = QuicInitialTracker()
    assert is_quic_long_header_initial(RFC9001_SERVER_INITIAL)
    assert tracker.feed(RFC9001_SERVER_INITIAL, "f") is None
    # its DCID is empty: never the DCID of a client's first Initial, so not even tried
    assert tracker.initial_packets == 0 and tracker.decrypt_failures == 0 and len(tracker) == 0


def test_initial_keys_after_retry_come_from_new_dcid():
    ch = RFC_CLIENT_HELLO
    tracker = QuicInitialTracker()
    assert tracker.feed(protect(padded(crypto_frame(0, ch[:100]))), "f") is None
    # after a Retry the client uses the server-chosen DCID and derives keys from it
    retry_dcid = b"\x55" * 12
    second = protect(padded(crypto_frame(100, ch[100:])), dcid=retry_dcid, pn=1, token=b"t" * 40)
    info = tracker.feed(second, "f")
    assert info is not None and info.sni == "example.com"


def test_connection_close_drops_state():
    ch = RFC_CLIENT_HELLO
    tracker = QuicInitialTracker()
    assert tracker.feed(protect(padded(crypto_frame(0, ch[:100]))), "f") is None
    assert tracker.tracking("f")
    close = b"\x1c\x01\x00\x03bye"
    assert tracker.feed(protect(padded(close), pn=1), "f") is None
    assert not tracker.tracking("f") and tracker.closed == 1
    assert tracker.feed(protect(padded(crypto_frame(100, ch[100:])), pn=2), "f") is None
    assert tracker.client_hellos == 0


def test_bounds_are_counted():
    ch = RFC_CLIENT_HELLO
    small = QuicInitialTracker(max_crypto_bytes=200)  # this ClientHello is 241 bytes
    assert small.feed(RFC9001_CLIENT_INITIAL, "f") is None
    assert small.crypto_overflow == 1 and small.bound_hits == 1 and not small.tracking("f")
    far = QuicInitialTracker()
    assert far.feed(protect(padded(crypto_frame(70000, b"x"))), "g") is None
    assert far.crypto_overflow == 1
    few = QuicInitialTracker(max_connections=2)
    for i in range(3):
        dg = protect(padded(crypto_frame(0, ch[:50])), dcid=bytes((i,)) * 8)
        assert few.feed(dg, i) is None
    assert few.evicted == 1 and len(few) == 2 and not few.tracking(0)
    assert few.counters()["evicted"] == 1


def test_not_a_client_hello():
    tracker = QuicInitialTracker()
    server_hello_like = b"\x02" + RFC_CLIENT_HELLO[1:]
    assert tracker.feed(protect(padded(crypto_frame(0, server_hello_like))), "f") is None
    assert tracker.not_client_hello == 1 and not tracker.tracking("f")


# --- real captures ----------------------------------------------------------------------------


def _udp_datagrams(path: Path):
    scapy_all = pytest.importorskip("scapy.all")
    logging.getLogger("scapy").setLevel(logging.ERROR)
    for pkt in scapy_all.rdpcap(str(path)):
        if scapy_all.UDP not in pkt:
            continue
        ip = pkt[scapy_all.IP] if scapy_all.IP in pkt else pkt[scapy_all.IPv6]
        udp = pkt[scapy_all.UDP]
        yield (ip.src, udp.sport, ip.dst, udp.dport), bytes(udp.payload)


def _client_hellos(path: Path, both_directions: bool = False):
    """(client port, sni) for each ClientHello found, feeding the client side of each UDP flow
    (the side that sent the flow's first long-header Initial) or, with both_directions, every
    datagram under one direction-less key."""
    tracker = QuicInitialTracker()
    client_of: dict[frozenset, tuple] = {}
    found = []
    for key, data in _udp_datagrams(path):
        pair = frozenset((key[:2], key[2:]))
        if pair not in client_of and is_quic_long_header_initial(data):
            client_of[pair] = key[:2]
        if both_directions:
            info = tracker.feed(data, pair)
            port = client_of.get(pair, key[:2])[1]
        else:
            if client_of.get(pair) != key[:2]:
                continue
            info = tracker.feed(data, key)
            port = key[1]
        if info is not None:
            found.append((port, info.sni))
    assert tracker.errors == 0
    return found, tracker


def _need_shared():
    if not PCAP.is_dir():
        pytest.skip(f"conformance data not found at {PCAP} (shared/ is absent)")


def _zeek_quic_cases():
    path = PCAP / "zeek" / "expected_sni_detail.json"
    if not path.is_file():
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=f"{path} is absent"))]
    conns = json.loads(path.read_text())["connections"]
    return [
        pytest.param(name, rows, id=name)
        for name, rows in conns.items()
        if name.startswith("quic/")
    ]


@pytest.mark.parametrize("name,rows", _zeek_quic_cases())
@pytest.mark.parametrize("both", [False, True], ids=["client-side", "both-directions"])
def test_zeek_quic_captures(name, rows, both):
    _need_shared()
    found, tracker = _client_hellos(PCAP / "zeek" / name, both_directions=both)
    expected = [
        (
            int(r["id.orig_p"]) if "id.orig_p" in r else None,
            None if r["server_name"] == "-" else r["server_name"],
        )
        for r in rows
    ]
    # one ClientHello per connection Zeek logged, with the same name (and client port)
    assert len(found) == len(expected), (found, expected, tracker.counters())
    for (port, sni), (exp_port, exp_sni) in zip(
        sorted(found, key=str), sorted(expected, key=str), strict=True
    ):
        assert sni == exp_sni
        if exp_port is not None:
            assert port == exp_port


def _ja4_quic_cases():
    path = PCAP / "ja4" / "expected_sni.json"
    if not path.is_file():
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=f"{path} is absent"))]
    files = json.loads(path.read_text())["files"]
    cases = []
    for name, entry in files.items():
        udp = [s for s in entry["rust_streams"] if s["transport"] == "udp"]
        if udp:
            cases.append(pytest.param(name, udp, id=name))
    return cases


@pytest.mark.parametrize("name,streams", _ja4_quic_cases())
def test_ja4_quic_captures(name, streams):
    _need_shared()
    found, tracker = _client_hellos(PCAP / "ja4" / name)
    expected = sorted((s["src_port"], s["tls_server_name"]) for s in streams)
    assert sorted(found) == expected, tracker.counters()


# --- fuzz -------------------------------------------------------------------------------------

_FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(st.lists(st.binary(max_size=1400), min_size=1, max_size=4))
def test_fuzz_random_datagrams(datagrams):
    tracker = QuicInitialTracker(max_connections=4)
    for i, dg in enumerate(datagrams):
        assert tracker.feed(dg, i % 2) is None
    assert tracker.errors == 0


@_FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 1199), st.integers(1, 255)), min_size=1, max_size=8),
    st.integers(0, 1200),
)
def test_fuzz_mutated_rfc_packet(flips, cut):
    dg = bytearray(RFC9001_CLIENT_INITIAL)
    for pos, x in flips:
        dg[pos] ^= x
    tracker = QuicInitialTracker()
    tracker.feed(bytes(dg), "a")
    tracker.feed(bytes(dg[:cut]), "b")
    assert tracker.errors == 0


@_FUZZ
@given(st.binary(min_size=4, max_size=600), st.integers(1, 4), st.sampled_from([QUIC_V1, QUIC_V2]))
def test_fuzz_decrypted_payloads(payload, pn_len, version):
    """Arbitrary plaintext under valid protection: exercises the frame walker."""
    tracker = QuicInitialTracker(max_crypto_bytes=4096)
    info = tracker.feed(protect(payload, pn_len=pn_len, version=version), "f")
    assert tracker.errors == 0 and tracker.decrypted == 1
    check_hello(info)


@_FUZZ
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 300)), min_size=1, max_size=12))
def test_fuzz_crypto_fragments(spans):
    """Random CRYPTO fragments of the real ClientHello: reported exactly when all are present."""
    ch = RFC_CLIENT_HELLO
    tracker = QuicInitialTracker()
    covered = bytearray(len(ch))
    result = None
    for pn, (a, b) in enumerate(spans):
        a, b = min(a, b), min(max(a, b), len(ch))
        if a >= len(ch):
            continue
        frames = crypto_frame(a, ch[a:b])
        info = tracker.feed(protect(padded(frames, 300), pn=pn), "f")
        covered[a:b] = b"\x01" * (b - a)
        if info is not None:
            assert result is None
            result = info
            assert all(covered)
    assert (result is not None) == all(covered)
    if result is not None:
        assert result.sni == "example.com"
    assert tracker.errors == 0
