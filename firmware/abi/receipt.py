"""Job receipts: they prove that this zone (the UEID, chained to the root) ran exactly this
code (the applet's measurement) on exactly this input and produced exactly this output, for
this caller's nonce.

Layer 0 signs the receipts of the jobs that finish together with one signature: the jobs'
claims are the leaves of a Merkle tree (RFC 9162 section 2.1, with SHA-384), and the alias
key signs the tree's root. Each job's receipt is a COSE_Sign1 (ES384, x5chain [alias,
DeviceID]) over that signed payload, and carries in its unprotected header (label
``sez.leaf``, not covered by the signature) its own claims and their inclusion proof::

    payload   = {ueid 256, iat 6, bootcount 267, eat_profile 265: PROFILE,
                 sez.tree: {size: n, root: MTH of the n leaves (48 bytes)}}
    sez.leaf  = bstr .cbor [index, [path: bstr (48 bytes) ...], claims: bstr .cbor {...}]

The leaf is the claims' bytes: its hash is SHA-384(0x00 || claims), a node's
SHA-384(0x01 || left || right). A verifier checks the signature, then folds the path from
the leaf's hash to the signed root (``included``): a changed claim, index or path fails. A
job alone makes a tree of one (root = the leaf's hash, no path).

==================  =====  =====================================================
claim (the leaf)    key    value
==================  =====  =====================================================
sez.job             text   the job id (text)
sez.job_counter     text   monotonic across the device's life (never repeats)
sez.applet          text   {name, version, measurement (48 bytes)}
sez.input           text   SHA-384 of the input
sez.output          text   SHA-384 of the output
sez.nonce           text   the caller's nonce (0 to 64 bytes)
sez.batch           text   a batch job's number of inputs (absent for one input)
sez.salt            text   16 random bytes (layer 0's): a receipt's path tells nothing of
                           the other jobs' claims
==================  =====  =====================================================

A **batch job** runs the applet on several inputs in turn (``run`` with ``inputs``) and has
one receipt over all of them: ``sez.input`` and ``sez.output`` are then the SHA-384 of the
CBOR arrays of the inputs and of the outputs, in order (``digest``).
"""

from __future__ import annotations

import hashlib

import cbor2

from . import wellformed
from .claims import BOOTCOUNT, IAT, PROFILE_KEY, UEID
from .jobs import NONCE_MAX

__all__ = ["IAT", "UEID", "PROFILE_KEY", "BOOTCOUNT", "PROFILE", "JOB", "JOB_COUNTER", "APPLET",
           "INPUT", "OUTPUT", "NONCE", "NONCE_MAX", "BATCH", "BATCH_MAX", "SALT", "TREE", "LEAF",
           "SIGNED_MAX", "digest", "leaf_hash", "tree", "included", "proof", "parse_proof"]

PROFILE = "urn:sez:receipt:2"
JOB = "sez.job"
JOB_COUNTER = "sez.job_counter"
APPLET = "sez.applet"
INPUT = "sez.input"
OUTPUT = "sez.output"
NONCE = "sez.nonce"
BATCH = "sez.batch"
SALT = "sez.salt"
TREE = "sez.tree"
LEAF = "sez.leaf"
#: The most inputs a batch job takes.
BATCH_MAX = 1024
#: The most receipts one signature covers (a tree of at most this many leaves).
SIGNED_MAX = 256
_HASH = 48


def digest(data: bytes | list[bytes]) -> bytes:
    """What ``sez.input`` and ``sez.output`` hold for ``data``: its SHA-384, or for a batch's
    list, the SHA-384 of its CBOR array (definite lengths: one encoding only)."""
    return hashlib.sha384(data if isinstance(data, bytes) else cbor2.dumps(data)).digest()


def _h(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()


def leaf_hash(leaf: bytes) -> bytes:
    return _h(b"\x00" + leaf)


def _node(left: bytes, right: bytes) -> bytes:
    return _h(b"\x01" + left + right)


def tree(hashes: list[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root of the tree over these leaf hashes (RFC 9162: the left subtree holds the
    largest power of two below n), and each leaf's inclusion path, nearest sibling first."""
    if len(hashes) == 1:
        return hashes[0], [[]]
    if not hashes:
        raise ValueError("a tree needs a leaf")
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    left, left_paths = tree(hashes[:k])
    right, right_paths = tree(hashes[k:])
    return _node(left, right), ([p + [right] for p in left_paths] +
                                [p + [left] for p in right_paths])


def included(leaf: bytes, index: int, size: int, path: list[bytes], root: bytes) -> bool:
    """Whether ``path`` proves that ``leaf`` is leaf ``index`` of the tree of ``size`` leaves
    whose root is ``root`` (RFC 9162 section 2.1.3.2)."""
    if not 0 <= index < size or any(len(p) != _HASH for p in path):
        return False
    fn, sn, r = index, size - 1, leaf_hash(leaf)
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = _node(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def proof(index: int, path: list[bytes], leaf: bytes) -> bytes:
    """The ``sez.leaf`` header of one receipt."""
    return cbor2.dumps([index, path, leaf])


def parse_proof(data: object) -> tuple[int, list[bytes], bytes, dict[str, object]]:
    """(index, path, leaf, the leaf's claims) from a ``sez.leaf`` header (which anyone may
    have written: small limits first); ValueError if it is not one."""
    if not isinstance(data, bytes):
        raise ValueError("sez.leaf is not a byte string")
    item = wellformed.loads(data, _PROOF)
    if not (isinstance(item, list) and len(item) == 3 and type(item[0]) is int
            and isinstance(item[1], list) and all(isinstance(p, bytes) for p in item[1])
            and isinstance(item[2], bytes)):
        raise ValueError("sez.leaf is not [index, path, claims]")
    claims = wellformed.loads(item[2], _CLAIMS)
    if not isinstance(claims, dict):
        raise ValueError("a leaf's claims are not a map")
    return item[0], list(item[1]), item[2], claims


_PROOF = wellformed.Limits(items=80, depth=2)
_CLAIMS = wellformed.Limits(items=64, depth=3)
