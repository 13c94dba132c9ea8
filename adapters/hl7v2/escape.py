"""HL7 v2 escape sequences (v2.5 section 2.7): \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\ ..."""

from __future__ import annotations

from adapters.hl7v2 import charsets


def unescape(text: str, seps: str, codec: str = "utf-8") -> str:
    """Decode escapes; ``seps`` is field, component, repetition, escape, subcomponent."""
    esc = seps[3]
    if esc not in text:
        return text
    field, component, repetition, subcomponent = seps[0], seps[1], seps[2], seps[4]
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != esc:
            out.append(ch)
            i += 1
            continue
        end = text.find(esc, i + 1)
        if end < 0:  # an unpaired escape character stands for itself
            out.append(text[i:])
            break
        body = text[i + 1 : end]
        out.append(_one(body, esc, field, component, repetition, subcomponent, codec))
        i = end + 1
    return "".join(out)


def _one(body: str, esc: str, f: str, c: str, r: str, s: str, codec: str) -> str:
    simple = {"F": f, "S": c, "T": s, "R": r, "E": esc}
    if body in simple:
        return simple[body]
    if body in (".br", ".sp"):
        return "\n"
    if body in ("H", "N") or body.startswith((".in", ".ti", ".sk", ".ce", ".fi", ".nf")):
        return ""  # highlighting and layout hints carry no text
    if body.startswith("X") and len(body) > 1:
        try:
            # the same decoder as the message text (GB 2312/GBK are read as GB 18030)
            return charsets.decode(bytes.fromhex(body[1:]), codec)
        except (ValueError, LookupError):  # odd digits, bad bytes (UnicodeDecodeError)
            return esc + body + esc
    if body.startswith(("C", "M")):
        return ""  # ISO 2022 charset switches: the message is decoded as a whole already
    return esc + body + esc  # unknown (\Zxx\ and the like): keep it visible


def escape(text: str, seps: str = "|^~\\&") -> str:
    field, component, repetition, esc, subcomponent = seps[0], seps[1], seps[2], seps[3], seps[4]
    out = text.replace(esc, f"{esc}E{esc}")
    for ch, code in ((field, "F"), (component, "S"), (subcomponent, "T"), (repetition, "R")):
        out = out.replace(ch, f"{esc}{code}{esc}")
    return (
        out.replace("\r\n", f"{esc}.br{esc}")
        .replace("\n", f"{esc}.br{esc}")
        .replace("\r", f"{esc}.br{esc}")
    )
