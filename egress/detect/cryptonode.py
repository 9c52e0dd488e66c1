"""Cryptocurrency node traffic that is not pool mining: peer-to-peer protocols and node/wallet RPC.

Signatures:

- Bitcoin P2P message header (Bitcoin developer reference "Message Headers"; Bitcoin Core kernel/chainparams.cpp
  ``pchMessageStart``): 4-byte network magic - mainnet ``F9BEB4D9``, testnet3 ``0B110907``, testnet4 ``1C163F28``,
  signet ``0A03CF40``, regtest ``FABFB5DA``; Litecoin ``FBC0B6DB`` and Dogecoin ``C0C0C0C0`` from their forks of
  the same file - then a 12-byte NUL-padded ASCII command from the P2P command list (``version`` first);
- Monero/CryptoNote Levin (monero contrib/epee/include/net/levin_base.h): ``LEVIN_SIGNATURE``
  ``0x0101010101012101`` as u64 LE at offset 0, i.e. bytes ``01 21 01 01 01 01 01 01``;
- JSON-RPC to a node or wallet: Ethereum ``eth_*``/``net_*``/``web3_*``/``personal_*``/``txpool_*`` methods
  (ethereum/execution-apis) other than the work-package calls `ethstratum` owns; Bitcoin Core RPC and Monero
  daemon/wallet RPC method names (bitcoin.org RPC reference, docs.getmonero.org "Daemon RPC"/"Wallet RPC"); Nano
  node RPC ``"action"`` names (docs.nano.org "RPC protocol"). Block-template and getwork calls are mining and
  belong to `getwork`.
"""

from __future__ import annotations

from typing import Final

from egress.detect import ethstratum, getwork, jsonrpc
from egress.detect.base import MORE, Category, Finding, FlowView, Result, evidence

NAME: Final = "cryptonode"

BITCOIN_MAGICS: Final = {
    b"\xf9\xbe\xb4\xd9": "bitcoin",
    b"\x0b\x11\x09\x07": "bitcoin-testnet3",
    b"\x1c\x16\x3f\x28": "bitcoin-testnet4",
    b"\x0a\x03\xcf\x40": "bitcoin-signet",
    b"\xfa\xbf\xb5\xda": "bitcoin-regtest",
    b"\xfb\xc0\xb6\xdb": "litecoin",
    b"\xc0\xc0\xc0\xc0": "dogecoin",
}
_MAGIC_FIRST: Final = frozenset(magic[0] for magic in BITCOIN_MAGICS)
BITCOIN_COMMANDS: Final = frozenset(
    {
        "version", "verack", "addr", "addrv2", "sendaddrv2", "inv", "getdata", "notfound", "getblocks",
        "getheaders", "headers", "block", "tx", "getaddr", "mempool", "ping", "pong", "reject", "sendheaders",
        "feefilter", "sendcmpct", "cmpctblock", "getblocktxn", "blocktxn", "filterload", "filteradd",
        "filterclear", "merkleblock", "alert", "wtxidrelay", "getcfilters", "cfilter", "getcfheaders",
        "cfheaders", "getcfcheckpt", "cfcheckpt", "sendtxrcncl",
    }
)  # fmt: skip
LEVIN_SIGNATURE: Final = b"\x01\x21\x01\x01\x01\x01\x01\x01"
_LEVIN_HEADER: Final = 33
"""signature u64, body size u64, have_to_return bool, command u32, return code i32, flags u32, version u32."""
_BITCOIN_HEADER: Final = 24
"""magic, 12-byte command, payload length u32, checksum u32."""

NODE_METHOD_PREFIXES: Final = ("eth_", "net_", "web3_", "personal_", "txpool_", "admin_", "debug_", "parity_")
BITCOIN_RPC_METHODS: Final = frozenset(
    {
        "getblockchaininfo", "getblockcount", "getbestblockhash", "getblockhash", "getblock", "getblockheader",
        "getnetworkinfo", "getpeerinfo", "getconnectioncount", "getmempoolinfo", "getrawmempool", "gettxout",
        "getrawtransaction", "sendrawtransaction", "decoderawtransaction", "estimatesmartfee", "getbalance",
        "getbalances", "getnewaddress", "getwalletinfo", "listunspent", "listtransactions", "sendtoaddress",
        "validateaddress", "getaddressinfo", "signrawtransactionwithwallet", "getmininginfo", "getdifficulty",
        "getchaintips", "getindexinfo", "uptime", "getinfo", "listwallets", "loadwallet",
    }
)  # fmt: skip
MONERO_RPC_METHODS: Final = frozenset(
    {
        "get_info", "get_block_count", "getblockcount", "get_last_block_header", "get_block_header_by_hash",
        "get_block_header_by_height", "get_block", "get_connections", "get_fee_estimate", "on_get_block_hash",
        "get_version", "sync_info", "get_balance", "get_address", "get_height", "transfer", "get_transfers",
        "get_accounts", "open_wallet", "create_wallet", "query_key", "make_integrated_address",
    }
)  # fmt: skip
NANO_ACTIONS: Final = frozenset(
    {
        "account_balance", "account_info", "account_history", "accounts_balances", "accounts_frontiers",
        "accounts_pending", "accounts_receivable", "block_count", "block_info", "blocks_info", "process",
        "send", "receive", "work_generate", "version", "telemetry", "peers", "frontiers", "wallet_balances",
    }
)  # fmt: skip
_ACTION_KEY: Final = b'"action"'


def _bitcoin(data: bytes) -> Result:
    if len(data) < _BITCOIN_HEADER:
        # Wait for the whole 24-byte header so that the evidence does not depend on segmentation.
        if len(data) < 16:
            return MORE if any(magic.startswith(data[:4]) for magic in BITCOIN_MAGICS) else None
        return MORE if _bitcoin(data[:16] + bytes(8)) is not None else None
    network = BITCOIN_MAGICS.get(data[:4])
    if network is None:
        return None
    command, _, padding = data[4:16].partition(b"\x00")
    if padding.strip(b"\x00") or command.decode("latin-1") not in BITCOIN_COMMANDS:
        return None
    return Finding(Category.CRYPTO_NODE, f"{network}-p2p", NAME, evidence(data[:_BITCOIN_HEADER]))


def _levin(data: bytes) -> Result:
    if not data.startswith(LEVIN_SIGNATURE):
        return MORE if LEVIN_SIGNATURE.startswith(data) else None
    if len(data) < _LEVIN_HEADER:
        return MORE
    command = int.from_bytes(data[17:21], "little")
    return Finding(Category.CRYPTO_NODE, "monero-levin", NAME, evidence(f"levin signature, command {command}"))


def _binary(data: bytes) -> Result:
    """Try the P2P headers on one direction's first bytes."""
    first = data[0]
    if first in _MAGIC_FIRST:
        return _bitcoin(data)
    if first == 0x01:
        return _levin(data)
    return None


def _rpc_protocol(method: str) -> str | None:
    if method in ethstratum.MINING_METHODS or method in getwork.MINING_METHODS:
        return None  # a mining call: `ethstratum`'s or `getwork`'s finding
    if method.startswith(NODE_METHOD_PREFIXES):
        return "ethereum-rpc"
    if method in BITCOIN_RPC_METHODS:
        return "bitcoin-rpc"
    if method in MONERO_RPC_METHODS:
        return "monero-rpc"
    return None


def _node_rpc(side: jsonrpc.Payload) -> Finding | None:
    """The first node/wallet call. A stream that also carries a mining call is still reported here: the engine
    lets a mining finding replace a crypto-node one whenever it comes (`egress.detect.engine`), whereas saying
    ``None`` here once a mining call showed up would make the answer depend on where the stream was split."""
    text = side.text
    found: list[tuple[int, str, bytes]] = []
    for method, offset in side.calls:
        protocol = _rpc_protocol(method)
        message = jsonrpc.message_at(text, offset, side.final) if protocol else None
        if protocol is not None and message is not None:
            found.append((offset, protocol, message))
            break
    offset = text.find(_ACTION_KEY)
    if offset >= 0 and jsonrpc.string_after(text, offset + len(_ACTION_KEY)) in NANO_ACTIONS:
        message = jsonrpc.message_at(text, offset, side.final)
        if message is not None:
            found.append((offset, "nano-rpc", message))
    if not found:
        return None
    _, protocol, message = min(found)  # the first by position, however much of the stream a prefix holds
    return Finding(Category.CRYPTO_NODE, protocol, NAME, evidence(message))


def _match(client: jsonrpc.Payload) -> Finding | None:
    """The client's finding: a node call is the client's (the server's side is not asked: `jsonrpc.drive_sides`)."""
    if client.kind is jsonrpc.Kind.JSON:
        return _node_rpc(client)
    return None


def detect(view: FlowView) -> Result:
    """Find Bitcoin-family or Monero peer-to-peer traffic, or node/wallet JSON-RPC, on a TCP stream."""
    pending = False
    for data in (view.client, view.server):
        if data:
            found = _binary(data)
            if isinstance(found, Finding):
                return found
            pending = pending or found is MORE
    if pending and not view.complete:
        return MORE
    return jsonrpc.drive_sides(view, _match, client_only=True)
