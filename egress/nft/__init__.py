"""The nftables data plane: `render` (policy → ruleset text, pure), `runner` (the only module that runs ``nft``),
`nflog` (the reader of the packets the ruleset logs)."""
