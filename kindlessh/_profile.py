"""Screen profiles: ``eink`` (kterm on a Kindle) and ``smooth`` (a laptop terminal).

Contract:
- :func:`choose_profile` picks the profile of a connection, first match wins: the command
  on the ssh line (``ssh -t host eink``), the ``KINDLESSH_PROFILE`` variable sent by the
  client, the same variable set by the key's ``environment=`` option in authorized_keys,
  then ``[ui] profile``. Only that one variable and only the two names are accepted;
  anything else is ignored. (The ``/eink`` and ``/smooth`` commands switch live later.)
- :func:`make_profile` turns a name into the settings the UI needs.

- eink: a steady cursor (every blink is a panel update); the first words of an answer
  at once, then one commit per ``eink_interval_ms``;
  a paged transcript (an answer fills the screen from the top, then flips); 1-bit styling.
- smooth: a commit every ``smooth_interval_ms``; the transcript scrolls to the bottom;
  colour from TERM (24-bit only if COLORTERM says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prompt_toolkit.output import ColorDepth

from ._config import UIConfig
from ._glyphs import GLYPH_MODES, GlyphMode

ProfileName = Literal["eink", "smooth"]
PROFILE_NAMES: tuple[ProfileName, ...] = ("eink", "smooth")
PROFILE_VARIABLE = "KINDLESSH_PROFILE"


@dataclass(frozen=True)
class Profile:
    """How one screen is painted."""

    name: ProfileName
    interval: float  # seconds between commits of streamed text
    paged: bool
    color_depth: ColorDepth
    source: str = "config"  # where the choice came from, shown in /help
    steady_cursor: bool = False  # ask the terminal not to blink the cursor
    glyphs: GlyphMode = "full"  # what the screen draws (see _glyphs)


def color_depth_for(term: str, env: dict[str, str]) -> ColorDepth:
    """The colour depth for a client's ``TERM`` (never 24-bit unless COLORTERM says so)."""
    term = term.lower()
    if term in ("", "dumb", "unknown"):
        return ColorDepth.DEPTH_1_BIT
    if env.get("COLORTERM", "").lower() in ("truecolor", "24bit"):
        return ColorDepth.DEPTH_24_BIT
    if term in ("linux", "vt100", "vt220", "ansi"):
        return ColorDepth.DEPTH_4_BIT
    return ColorDepth.DEPTH_8_BIT


def _valid(value: object) -> ProfileName | None:
    text = str(value or "").strip().lower()
    if text == "eink":
        return "eink"
    if text == "smooth":
        return "smooth"
    return None


def choose_profile(
    command: str, client_env: dict[str, str], key_env: dict[str, str], default: str
) -> tuple[ProfileName, str]:
    """The profile name and where it came from (first match wins; see module docstring)."""
    for value, source in (
        (command, "the ssh command"),
        (client_env.get(PROFILE_VARIABLE), f"{PROFILE_VARIABLE} from the client"),
        (key_env.get(PROFILE_VARIABLE), "the key's environment= option"),
        (default, "[ui] profile in the config"),
    ):
        name = _valid(value)
        if name is not None:
            return name, source
    return "smooth", "the default"


def make_profile(
    name: ProfileName, ui: UIConfig, term: str, env: dict[str, str], source: str = "config"
) -> Profile:
    """The settings of profile ``name`` for a client with ``term`` and ``env``."""
    if name == "eink":
        return Profile(
            "eink", ui.eink_interval_ms / 1000, True, ColorDepth.DEPTH_1_BIT, source,
            steady_cursor=True, glyphs=_glyphs(ui.eink_glyphs, "kindle"),
        )
    return Profile(
        "smooth", ui.smooth_interval_ms / 1000, False, color_depth_for(term, env), source,
        glyphs=_glyphs(ui.smooth_glyphs, "full"),
    )


def _glyphs(value: str, default: GlyphMode) -> GlyphMode:
    for mode in GLYPH_MODES:
        if value == mode:
            return mode
    return default
