"""The modules that may get a vision copy, importable without torch (the CLIs list them in --help).

Empty = shared weights (EVEv1-like); ["ffn"] = the Mono-InternVL / EVEv1.5 variant; all three =
EVEv2 (divide-and-conquer)."""

from typing import Literal, get_args

Decoupled = Literal["attention", "norm", "ffn"]
DECOUPLABLE: tuple[str, ...] = get_args(Decoupled)
EVEV2 = list(DECOUPLABLE)
