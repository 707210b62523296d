"""LaTeX text from plain strings: escaping, breakable code, numbers as the factsheet prints them."""

from __future__ import annotations

import math

_ESCAPES = {
    "\\": r"\textbackslash{}",
    "{": r"\{",
    "}": r"\}",
    "$": r"\$",
    "&": r"\&",
    "#": r"\#",
    "^": r"\textasciicircum{}",
    "_": r"\_",
    "%": r"\%",
    "~": r"\textasciitilde{}",
}


def escape(text: str) -> str:
    return "".join(_ESCAPES.get(c, c) for c in str(text))


def code(text: str) -> str:
    """Typewriter text that may break after slashes (long paths and commands) and never ligates `--`."""
    out = escape(text).replace("/", r"/\allowbreak{}").replace("--", "-{}-")
    return rf"\texttt{{{out}}}"


def path_lines(paths: list[str]) -> str:
    """File paths in a narrow table cell: one a line, small type, broken only after a slash when a path is
    longer than the cell."""
    return r" \newline ".join(r"{\scriptsize " + code(p) + "}" for p in paths)


def number(value: float, spec: str) -> str:
    """`value` formatted with `spec` ("2f", "4f", "3f", "d", ","), for a table cell."""
    if spec == "d":
        return str(int(value))
    if spec == ",":
        return f"{int(value):,}"
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value}")
    return format(value, f".{spec}")


def scientific(value: float) -> str:
    """1e-3 -> $10^{-3}$, 2e-05 -> $2\\times10^{-5}$, 0.999 -> 0.999: how learning rates read in a paper."""
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(value)))
    if -2 <= exponent <= 3:
        return f"{value:g}"
    mantissa = value / 10**exponent
    if math.isclose(mantissa, round(mantissa), rel_tol=1e-9):
        mantissa = round(mantissa)
    if mantissa == 1:
        return rf"$10^{{{exponent}}}$"
    return rf"${mantissa:g}\times10^{{{exponent}}}$"
