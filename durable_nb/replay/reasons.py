"""Saying why: the reason a call runs again although the log has a record of it, read
from the stored digest document and the call's new digest."""

from __future__ import annotations

from typing import Any

from .digests import legacy_digest
from .walk import Digest, shown_value

__all__ = ["explain"]


_KINDS = {"code": 0, "defaults": 1, "global": 2, "closure": 3, "argument": 4, "version": 5}


def explain(old: dict[str, Any] | None, new: Digest, name: str, run_id: int) -> str:
    """Why a call whose stored record has document ``old`` runs again with ``new``."""
    if new.value.startswith("unjudged:"):
        return (
            f"what {name} depends on cannot be known before it runs (eval, exec or globals() "
            "in its code, or a value that cannot be read; a warning said which): it runs "
            "every time"
        )
    if old is None:
        return (
            f"the record of {name} (run {run_id}) predates dependency digests; "
            "accept it to replay it"
        )
    before = {label: (digest, shown) for label, digest, shown in old["entries"]}
    now = {e.label: (e.digest, shown_value(e.value)) for e in new.entries}
    values = {e.label: e.value for e in new.entries}
    rules = old.get("rules", 1)
    changes: list[tuple[int, str]] = []
    for label, (digest, shown) in now.items():
        kind, _, what = label.partition(" ")
        rank = _KINDS.get(kind, 9)
        if label not in before:
            if kind == "identity":
                changes.append((rank, f"{what} now"))
            elif rules < 3 and digest.startswith("installed "):
                changes.append((rank, _counted_now(what, digest)))
            else:
                changes.append((rank + 10, f"new dependency {what}"))
        elif before[label][0] != digest:
            if kind == "version":  # a version entry's digest is the version itself
                changes.append((rank, f"{what} {before[label][0]} -> {digest}"))
            elif rules < 2 and _same_by_older_rule(values[label], before[label][0]):
                changes.append((rank, _newer_rule(kind, what)))
            else:
                changes.append((rank, _changed(kind, what, before[label][1], shown)))
    for label in before.keys() - now.keys():
        kind, _, what = label.partition(" ")
        if kind == "identity":
            changes.append((20, what.replace(" is ", " is no longer ", 1)))
        else:
            changes.append((20, f"no longer depends on {what}"))
    if not changes:
        return f"dependencies of {name} changed since run {run_id}" + _by_type(new)
    changes.sort(key=lambda c: c[0])
    said = list(dict.fromkeys(text for _, text in changes))  # (one helper, reached twice)
    texts = said[:3]
    if len(said) > 3:
        texts.append(f"{len(said) - 3} more")
    return "; ".join(texts) + f" since run {run_id}" + _by_type(new)


def _by_type(digest: Digest) -> str:
    """What the reason adds about values only counted by their type (not seen changing)."""
    if not digest.opaque:
        return ""
    names = [label.partition(" ")[2] for label in digest.opaque]
    return f" ({', '.join(dict.fromkeys(names))} counted by type only)"


def _same_by_older_rule(value: Any, stored: str) -> bool:
    """Whether ``value`` has, by the rules before RULES 2, the digest ``stored``: then
    only the rule changed, not the value."""
    return value is not None and legacy_digest(value) == stored


def _newer_rule(kind: str, what: str) -> str:
    return (
        f"{kind} {what} is digested by a newer rule (durable_nb was upgraded; its value "
        "looks the same: accept replays it)"
    )


def _counted_now(what: str, digest: str) -> str:
    return (
        f"durable_nb was upgraded: which installed object {what} is now counts "
        f"({digest.removeprefix('installed ')}); accept replays it"
    )


def _changed(kind: str, what: str, old: str | None, new: str | None) -> str:
    if kind == "code":
        return f"code of {what.removeprefix('step ')} changed"
    noun = {"closure": "closure variable", "defaults": "defaults of", "argument": "code of"}
    detail = f" ({old} -> {new})" if old is not None and new is not None else ""
    return f"{noun.get(kind, kind)} {what} changed{detail}"
