"""The PROXY protocol (v1, v2): a sans-IO parser, the prelude, headers to send."""
