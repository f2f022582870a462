"""Where the engine's shared token comes from, for `stepfoley serve`, `stepfoley send`, the
client library and the REAPER actions alike, so it never has to appear on a command line
(where every local user can read it in `ps`):

1. an explicit value (`--token`, kept for compatibility; or EngineClient(token=...)),
2. `--token-file PATH`,
3. the environment variable STEPFOLEY_TOKEN,
4. the token file: $STEPFOLEY_TOKEN_FILE, else $XDG_CONFIG_HOME/stepfoley/token, else
   ~/.config/stepfoley/token (%APPDATA%\\stepfoley\\token on Windows), when it exists.

A token file holds the token on its first line (any line break ends it, as str.splitlines
has them); white space around the token is not part of it. On POSIX systems it must be a regular file
owned by the user and readable by nobody else (chmod 600); otherwise it is refused. Whatever its
source, a token is 1-MAX_TOKEN_CHARS characters of text (no NUL, which ends an OSC string; no
byte that is not UTF-8): every message carries it, and the engine refuses a longer one, so a token
that breaks the rule is refused when it is resolved (TokenError), before an engine starts with it
or a client sends it. No token anywhere means "" (no token); so does an explicit "".
Pure Python: imports nothing of the engine.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from stepfoley.bridge.protocol import MAX_TOKEN_CHARS
from stepfoley.request import is_utf8

ENV_TOKEN = "STEPFOLEY_TOKEN"
ENV_TOKEN_FILE = "STEPFOLEY_TOKEN_FILE"
# What is read of a token file: its first line, white space around the token included (reading
# MAX_TOKEN_CHARS + 2 took the end off a long token behind a few spaces, a different token)
TOKEN_FILE_READ_CHARS = 4096


class TokenError(Exception):
    """A token (or token file) that cannot be used; the message says how to fix it. `code` is
    "bad_token_file" for a token file, "bad_token" for a token given otherwise."""

    code = "bad_token_file"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


def is_valid_token(token: str) -> bool:
    """1-MAX_TOKEN_CHARS characters of text: what every message can carry and the engine accepts."""
    return isinstance(token, str) and 1 <= len(token) <= MAX_TOKEN_CHARS and "\x00" not in token and is_utf8(token)


def check_token(token: str, source: str | None = None) -> str:
    """`token` when it is valid; else TokenError ("bad_token") naming `source` (e.g. "$STEPFOLEY_TOKEN")."""
    if is_valid_token(token):
        return token
    what = "The token" if source is None else f"The token from {source}"
    rule = f"a token is 1-{MAX_TOKEN_CHARS} characters of text (no NUL)"
    if isinstance(token, str) and len(token) > MAX_TOKEN_CHARS:
        message = f"{what} is {len(token)} characters long; {rule}. Choose a shorter one."
    elif isinstance(token, str) and not token:
        message = f"{what} is empty; {rule}."
    else:
        message = f"{what} is not text: {rule}. Choose one made of letters and digits."
    raise TokenError(message, code="bad_token")


def token_file_path() -> Path:
    if os.environ.get(ENV_TOKEN_FILE):
        return Path(os.environ[ENV_TOKEN_FILE])
    if os.name == "nt" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "stepfoley" / "token"
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "stepfoley" / "token"


def read_token_file(path: str | os.PathLike) -> str:
    """The token in `path`; raises TokenError if the file is missing, shared or malformed."""
    if not str(path).strip():  # an unset shell variable: not the current folder, as Path("") is
        raise TokenError("The token file name is empty: give the file that holds the token.")
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise TokenError(f"The token file '{path}' is not a regular file.")
        if os.name == "posix":
            if info.st_uid != os.geteuid():
                raise TokenError(f"The token file '{path}' belongs to another user; create your own.")
            if info.st_mode & 0o077:
                raise TokenError(f"The token file '{path}' can be read by other users (mode "
                                 f"{stat.S_IMODE(info.st_mode):03o}); run `chmod 600 '{path}'`.")
        # utf-8-sig: Windows PowerShell 5.1 (Set-Content -Encoding UTF8) and Notepad before
        # Windows 10 1903 start the file with a byte-order mark, which is not part of the token
        with open(path, encoding="utf-8-sig") as f:
            text = f.read(TOKEN_FILE_READ_CHARS + 1)
    except OSError as e:
        raise TokenError(f"Cannot read the token file '{path}': {e.strerror or e}.") from None
    except UnicodeDecodeError:
        raise TokenError(f"The token file '{path}' is not UTF-8 text.") from None
    lines = text.splitlines()
    token = lines[0].strip() if text.strip() else ""
    cut = len(lines) == 1 and len(text) > TOKEN_FILE_READ_CHARS  # its first line goes on past what was read
    if cut or not is_valid_token(token):
        raise TokenError(f"The token file '{path}' must hold the token (1-{MAX_TOKEN_CHARS} characters of text, "
                         "no NUL) on its first line.")
    return token


def resolve_token(explicit: str | None = None, file: str | os.PathLike | None = None) -> str:
    """The token to use, by the order above ("" when there is none). Raises TokenError for a
    token that breaks the rules above, from whichever source."""
    if explicit is not None:
        return check_token(explicit, "--token") if explicit else ""
    if file is not None:
        return read_token_file(file)
    if os.environ.get(ENV_TOKEN):
        return check_token(os.environ[ENV_TOKEN], f"${ENV_TOKEN}")
    path = token_file_path()
    if os.environ.get(ENV_TOKEN_FILE) or os.path.lexists(path):
        return read_token_file(path)
    return ""
