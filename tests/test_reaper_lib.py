"""StepFoley_lib.lua's pure parts under a real Lua 5.4: the JSON codec against Python's
json module, the project-time -> file-time mapping, command-line quoting."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "reaper_fake"))
import harness as h  # noqa: E402

pytestmark = pytest.mark.skipif(h.LUA is None, reason="lua5.4 is not installed (apt-get install lua5.4)")

LIB = h.SCRIPTS / "StepFoley_lib.lua"


def run_lua(code: str, stdin: bytes = b"", env: dict | None = None) -> str:
    """What Lua 5.4 writes running `code` (its own prelude), in the environment `env` (a locale)."""
    # bytes, not text mode: text mode would turn a decoded "\r" into "\n"
    done = subprocess.run([h.LUA, "-e", code], input=stdin, capture_output=True, timeout=20, env=env)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout.decode("utf-8")


def lua(code: str, stdin: str = "") -> str:
    prelude = f"reaper = {{GetOS = function() return 'Other' end}}; SF = dofile({json.dumps(str(LIB))}); "
    return run_lua(prelude + code, stdin.encode())


TRICKY = {
    "caption": 'glass "clink", then \\ steps\n\ttab \x01\x1f\x7f',
    "unicode": "Schritte auf Kies — 足音 🎬",
    "numbers": [0, -3, 1.5, 1e-7, 123456789012, 0.1, -2.5e300],
    "nested": {"empty_list": [], "empty_obj": {}, "bools": [True, False], "null": None},
}


def test_json_encode_is_read_by_python():
    # Python writes a Lua-readable literal via its own JSON, Lua decodes and re-encodes
    encoded = lua("io.write(SF.json_encode(SF.json_decode(io.read('a'))))", json.dumps(TRICKY))
    back = json.loads(encoded)
    expected = json.loads(json.dumps(TRICKY))
    del expected["nested"]["null"]  # JSON null decodes to an absent key in Lua
    assert back == expected


def test_json_decode_escapes_and_surrogates():
    text = json.dumps({"a": "\u00e9\u2014\U0001f3ac", "b": "x\"y\\z/\b\f\n\r\t"}, ensure_ascii=True)
    out = lua("local v = SF.json_decode(io.read('a')); io.write(v.a, '|', v.b)", text)
    assert out == "\u00e9\u2014\U0001f3ac|x\"y\\z/\b\f\n\r\t"


def test_json_escapes_control_characters_only():
    out = lua("io.write(SF.json_encode({s = 'a\\1b\"c\\\\d é'}))")
    assert out == '{"s":"a\\u0001b\\"c\\\\d é"}'
    assert json.loads(out)["s"] == 'a\x01b"c\\d é'


def compiled_locale(tmp_path_factory, source: str, charmap: str, what: str) -> tuple[dict, str]:
    """A locale compiled with glibc's localedef into a temporary folder: (environment with
    LOCPATH, name). Skips the test where it cannot be made."""
    import os
    import shutil

    localedef = shutil.which("localedef")
    if localedef is None:
        pytest.skip("localedef is not installed (glibc's locale compiler)")
    name = f"{source}.{charmap}"
    folder = tmp_path_factory.mktemp("locales")
    made = subprocess.run([localedef, "-i", source, "-f", charmap, str(folder / name)], capture_output=True, timeout=60)
    if not (folder / name).exists():
        pytest.skip(f"localedef could not make {what}: {made.stderr.decode(errors='replace')[-200:]}")
    return {**os.environ, "LOCPATH": str(folder)}, name


@pytest.fixture(scope="module")
def latin1_locale(tmp_path_factory):
    """A Latin-1 C locale: the kind a host program may set for its Lua, under which the C library
    counts bytes 0x80-0x9F as control characters."""
    return compiled_locale(tmp_path_factory, "en_US", "ISO-8859-1", "a Latin-1 locale")


def test_utf8_text_passes_untouched_under_a_latin1_locale(latin1_locale):
    # ł ’ Cyrillic and kana hold bytes 0x80-0x9F: with %c they came out as \u0082... (another
    # text) and the engine's replies holding them could not be read ("control character")
    env, name = latin1_locale
    text = "łódź ’quoted’ — Привет かな Zoë voilà"
    prelude = (f"reaper = {{GetOS = function() return 'Other' end}}; SF = dofile({json.dumps(str(LIB))}); "
               f"assert(os.setlocale({json.dumps(name)}, 'ctype')); assert(('\\130'):find('%c')); ")
    code = ("local v = SF.json_decode(io.read('a')); "
            "io.write(SF.json_encode({s = v.s}), '|', SF.trim(' \\t' .. v.s .. ' \\n'), '|', v.s)")
    out = run_lua(prelude + code, json.dumps({"s": text}, ensure_ascii=False).encode(), env)
    encoded, trimmed, decoded = out.split("|")
    assert encoded == json.dumps({"s": text}, ensure_ascii=False, separators=(",", ":"))
    assert trimmed == decoded == text


def test_the_dialogs_messages_quote_utf8_text_intact_under_a_latin1_locale(latin1_locale):
    # string.lower follows the locale as %c did: a mistyped method "Éclat" came back as "\xe3\x89clat"
    env, name = latin1_locale
    code = (f"reaper = {{GetOS = function() return 'Other' end}}; SF = dofile({json.dumps(str(LIB))}); "
            f"assert(os.setlocale({json.dumps(name)}, 'ctype')); "
            "local _, a = SF.parse_form({caption = 'steps', method = 'Éclat'}, {engine = {}}); "
            "local _, b = SF.parse_form({caption = 'steps', negatives = 'Всё'}, {engine = {}, negatives = true}); "
            "io.write(a, '|', b)")
    method, negatives = run_lua(code, env=env).split("|")
    assert method == '"Éclat" is not a method name.'
    assert negatives == 'Negatives must be layers, selection or none, got "Всё".'


@pytest.fixture(scope="module")
def german_locale(tmp_path_factory):
    """A German locale, whose LC_NUMERIC writes and reads a decimal comma: what REAPER's Lua
    would see if anything in the process (a plugin) called setlocale."""
    return compiled_locale(tmp_path_factory, "de_DE", "UTF-8", "a German locale")


def test_numbers_go_out_with_a_dot_and_a_comma_is_never_read_under_a_german_locale(german_locale):
    """string.format and tostring follow LC_NUMERIC: {"alpha":4,5,...} was sent (not JSON) and
    --timeout "180,5" put on the command line; tonumber read "4,5" as 4.5 there and not elsewhere."""
    env, name = german_locale
    code = (f"reaper = {{GetOS = function() return 'Other' end}}; SF = dofile({json.dumps(str(LIB))}); "
            f"assert(os.setlocale({json.dumps(name)}, 'numeric')); assert(string.format('%.1f', 4.5) == '4,5'); "
            "io.write(SF.json_encode({alpha = 4.5, file_in = 1.0, curve = {{0.25, -23.5}}, tiny = 1e-7}), '|', "
            "SF.with_dot(tostring(180.5)), '|', tostring(SF.parse_number('4.5') == 4.5), '|', "
            "tostring(SF.parse_number('4,5')), '|', select(2, SF.parse_number('4,5')))")
    encoded, timeout, dot, comma, hint = run_lua(code, env=env).split("|")
    assert json.loads(encoded) == {"alpha": 4.5, "file_in": 1.0, "curve": [[0.25, -23.5]], "tiny": 1e-7}
    assert (timeout, dot, comma) == ("180.5", "true", "nil")
    assert hint == " Write the decimal point as a dot (4.5)."


def test_settings_are_written_with_a_dot_and_a_comma_an_older_version_wrote_is_read(german_locale):
    """0.5.14 wrote a fractional setting with tostring: "180,5" under a German LC_NUMERIC, which
    the Settings dialog then refused as shown, and which a C locale read as no number (the
    default came back without a word)."""
    env, name = german_locale
    fake = ("local store = {}; reaper = {GetOS = function() return 'Other' end, "
            "GetExtState = function(s, k) return store[k] or '' end, HasExtState = function(s, k) return store[k] ~= nil end, "
            "SetExtState = function(s, k, v) store[k] = v end, DeleteExtState = function(s, k) store[k] = nil end}; "
            f"SF = dofile({json.dumps(str(LIB))}); ")
    for locale in (name, "C"):
        code = (fake + f"assert(os.setlocale({json.dumps(locale)}, 'numeric')); "
                "local s = SF.load_settings(); s.watchdog_s, s.port = 180.5, 9017; SF.save_settings(s); "
                "local written = store.watchdog_s .. '|' .. store.port; "
                "store.watchdog_s = '240,25'; local read = SF.load_settings().watchdog_s; "
                "io.write(written, '|', SF.number_text(read), '|', SF.number_text(7))")
        assert run_lua(code, env=env) == "180.5|9017|240.25|7", locale


def test_the_dialog_shows_and_prefills_numbers_with_a_dot_under_a_german_locale(german_locale):
    """The dialog wrote its defaults and a regenerated item's values with string.format: "4,5",
    which parse_form then refused ("Write the decimal point as a dot"), and whose comma split
    the plain dialog's captions, moving every label after it down a field."""
    env, name = german_locale
    code = (f"reaper = {{GetOS = function() return 'Other' end, GetExtState = function() return '' end}}; "
            f"SF = dofile({json.dumps(str(LIB))}); assert(os.setlocale({json.dumps(name)}, 'numeric')); "
            "local v = SF.values_from_meta({caption = 'steps', alpha = 4.5, beta = 1.5, steps = 25}); "
            "local p, err = SF.parse_form(v, {engine = {capabilities = {bounds = {alpha = {0, 20}, beta = {0, 20}}}}}); "
            "io.write(v.alpha, '|', v.beta, '|', p and SF.number_text(p.alpha) or 'nil', '|', tostring(err), '|', "
            "SF.default_text({defaults = {alpha = 4.5}}, 'alpha'))")
    assert run_lua(code, env=env) == "4.5|1.5|4.5|nil|4.5"


@pytest.mark.parametrize("text, integer, value, hint", [
    ("4.5", False, 4.5, None), ("-0.25", False, -0.25, None), ("1e-3", False, 0.001, None), ("12", True, 12, None),
    ("4,5", False, None, " Write the decimal point as a dot (4.5)."),
    ("10.000", True, None, " Give the digits only, without separators."),  # a German ten thousand, not ten
    ("1'000", True, None, " Give the digits only, without separators."),
    ("0x10", False, None, ""), ("inf", False, None, ""), ("12.5", True, None, ""), ("1.000.000", True, None,
                                                                                 " Give the digits only, without separators."),
])
def test_a_number_is_read_in_one_form_whatever_the_locale(text, integer, value, hint):
    out = lua(f"local x, why = SF.parse_number({json.dumps(text)}, {str(integer).lower()}); "
              "io.write(tostring(x), '|', tostring(why))")
    assert out == f"{value if value is not None else 'nil'}|{hint if hint is not None else 'nil'}"


def test_trim_takes_the_spaces_keyboards_type_outside_ascii_and_stays_linear():
    # Option+Space on a Mac types U+00A0: "nag\u00a0" was "not a method name"
    out = lua("io.write(SF.trim('\\u{A0} nag\\u{A0}\\u{202F}'), '|', SF.trim('\\u{3000}'), '|', "
              "tostring(SF.is_blank('\\u{A0}\t')), '|', SF.trim(' a\\u{A0}b '), '|', "
              "#SF.trim(string.rep('\\u{A0}', 20000) .. 'x' .. string.rep(' ', 20000)))")
    assert out == "nag||true|a\u00a0b|1"


@pytest.mark.parametrize("path, windows, expected", [
    ("~/stepfoley-venv/bin/stepfoley", False, "/home/ana/stepfoley-venv/bin/stepfoley"),
    ("~", False, "/home/ana"),
    ("/opt/~x/stepfoley", False, "/opt/~x/stepfoley"),
    ("%USERPROFILE%\\stepfoley-venv\\Scripts\\stepfoley.exe", True, "C:\\Users\\Ana\\stepfoley-venv\\Scripts\\stepfoley.exe"),
    ("%NOT_SET%\\x.exe", True, "%NOT_SET%\\x.exe"),
    ("%USERPROFILE%/x", False, "%USERPROFILE%/x"),  # not a Windows form elsewhere
])
def test_the_paths_the_docs_write_are_expanded_as_a_shell_would(path, windows, expected):
    env = "{HOME = '/home/ana', USERPROFILE = 'C:\\\\Users\\\\Ana'}"
    out = lua(f"local env = {env}; io.write(SF.expand_home({json.dumps(path)}, {str(windows).lower()}, "
              "function(name) return env[name] end))")
    assert out == expected


@pytest.mark.parametrize("bad", ['{"a":', '[1,2', '{"a" 1}', '"\\q"', "tru", "[1] x"])
def test_json_decode_rejects_malformed(bad):
    out = lua("local v, err = SF.json_decode(io.read('a')); io.write(tostring(v), '|', tostring(err))", bad)
    value, err = out.split("|", 1)
    assert value == "nil" and err != "nil"


def test_map_interval_through_sections():
    # take: item at 10 s, startoffs 0.5 s, playrate 2; a section 3..9 of the file
    out = lua("local a, b, rev = SF.map_interval(11, 12, 10, 0.5, 2, "
              "{{section = true, offs = 3, len = 6, rev = false}, {section = false}}); "
              "io.write(string.format('%.12f %.12f %s', a, b, tostring(rev)))")
    a, b, rev = out.split()
    assert float(a) == pytest.approx(3 + 0.5 + 1 * 2) and float(b) == pytest.approx(3 + 0.5 + 2 * 2)
    assert rev == "false"


def test_map_interval_reversed_section():
    out = lua("local a, b, rev = SF.map_interval(0, 1, 0, 0, 1, "
              "{{section = true, offs = 2, len = 4, rev = true}, {section = false}}); "
              "io.write(string.format('%.12f %.12f %s', a, b, tostring(rev)))")
    a, b, rev = out.split()
    assert float(a) == pytest.approx(6.0) and float(b) == pytest.approx(5.0) and rev == "true"


@pytest.mark.parametrize("path,safe", [
    ("/home/me/My Project (v2)/StepFoley/jobs", True),
    ("C:\\Users\\Jane Doe\\AppData\\Roaming\\REAPER", True),
    ("/home/me/it's", True),
    ("C:\\Users\\José\\Documents\\Geräusche & Töne [v2]\\l'été!", True),
    ("/home/足音/プロジェクト/音效 (1)", True),
    ('/home/me/My "Film"', False),
    ("/home/me/$HOME", False),
    ("C:\\Users\\%USERNAME%", False),
    ("/home/me/a`b`", False),
    ("/home/me/two\nlines", False),
    ("C:\\Users\\me\\", False),  # a trailing backslash would escape the closing quote
    ("", False),
])
def test_command_line_safety(path, safe):
    out = lua(f"io.write(tostring(SF.is_command_line_safe({lua_string(path)})))")
    assert out == str(safe).lower()


def test_invalid_utf8_is_not_put_on_a_command_line():
    assert lua('io.write(tostring(SF.is_command_line_safe("/home/caf\\233/x")))') == "false"


def lua_string(s: str) -> str:
    """A Lua string literal for any text (UTF-8 bytes as decimal escapes)."""
    return '"' + "".join(c if c.isalnum() and c.isascii() or c in " /.-_()[]&'!,:" else
                         "".join(f"\\{b:03d}" for b in c.encode("utf-8")) for c in s) + '"'


FAKE = h.REPO / "tests" / "reaper_fake" / "reaper_fake.lua"
ARGVS = [
    ["C:\\Users\\José\\stepfoley-venv\\Scripts\\stepfoley.exe", "send", "--request",
     "C:\\Users\\José\\Documents\\REAPER Media\\Geräusche & Co [v2]\\StepFoley\\jobs\\1\\request.json",
     "--status", "\\\\server\\share\\l'été 足音\\status.json", "--timeout", "180"],
    ["/Users/josé/venv/bin/stepfoley", "send", "--request", "/Users/josé/Filme/it's [a] & b/request.json"],
]


@pytest.mark.parametrize("windows", [True, False])
@pytest.mark.parametrize("argv", ARGVS)
def test_command_line_splits_back_into_the_same_arguments(argv, windows):
    """REAPER's splitting of what command_line() builds gives back every argument, on Windows
    (CommandLineToArgvW rules) and elsewhere (REAPER's own splitter)."""
    code = (f"fake = dofile({json.dumps(str(FAKE))}); SF = dofile({json.dumps(str(LIB))}); "
            "local argv = SF.json_decode(io.read('a')); "
            f"io.write(SF.json_encode(fake.split_command_line(SF.command_line(argv), {str(windows).lower()})))")
    assert json.loads(run_lua(code, json.dumps(argv).encode())) == argv


@pytest.mark.parametrize("line,argv", [
    # Microsoft's examples for parsing C command-line arguments (CommandLineToArgvW rules)
    ('"abc" d e', ["abc", "d", "e"]),
    ('a\\\\\\b d"e f"g h', ["a\\\\\\b", "de fg", "h"]),
    ('a\\\\\\"b c d', ['a\\"b', "c", "d"]),
    ('a\\\\\\\\"b c" d e', ["a\\\\b c", "d", "e"]),
    ('a"b"" c d', ['ab" c d']),
])
def test_fake_windows_splitter_follows_microsoft(line, argv):
    code = f"fake = dofile({json.dumps(str(FAKE))}); io.write(table.concat(fake.split_command_line(io.read('a'), true), '|'))"
    assert run_lua(code, line.encode()) == "|".join(argv)


@pytest.mark.parametrize("status,words,fraction", [
    ({"state": "running", "phase": "features", "step": 12, "total": 64}, "reading the picture: 12 of 64", 12 / 64),
    ({"state": "running", "phase": "sampling", "step": 5, "total": 25}, "generating: 5 of 25", 0.2),
    ({"state": "running", "phase": "decoding"}, "decoding the audio", None),
    ({"state": "running", "phase": "finishing", "step": 2, "total": 8}, "finishing the stems", 0.25),
    ({"state": "running", "phase": "warming up", "step": 1, "total": 2}, "warming up: 1 of 2", 0.5),
    ({"state": "running", "step": 7, "total": 25}, "step 7 of 25", 7 / 25),  # an engine without phases
    ({"state": "queued", "step": 0, "total": 0}, "queued", None),
    ({"state": "queued", "phase": "engine_loading", "step": 0, "total": 0},  # send waits for the model
     "waiting for the engine to load its model", None),
])
def test_describe_progress(status, words, fraction):
    out = lua("local w, f = SF.describe_progress(SF.json_decode(io.read('a'))); io.write(SF.json_encode({w, f or -1}))",
              json.dumps(status))
    got_words, got_fraction = json.loads(out)
    assert got_words == words
    assert got_fraction == pytest.approx(-1 if fraction is None else fraction)


CAPS = {"model": "m", "defaults": {"method": "nag", "alpha": 3.0, "beta": 2.0, "steps": 3},
        "methods": [{"name": "independent", "audio": None, "available": True},
                    {"name": "nag", "audio": "existing", "available": True},
                    {"name": "reference", "audio": "reference", "available": False, "unavailable_reason": "no ControlNet"}],
        "bounds": {"alpha": [0, 100], "beta": [0, 100], "steps": [1, 200], "seed": [0, 9223372036854775807]}}


def parse_form(values: dict, spec: str = "{negatives = true}", caps=CAPS):
    code = (f"local spec = {spec}; spec.engine = {{capabilities = SF.json_decode(io.read('a'))}}; "
            f"SF.random_seed = function() return 1234 end; "
            f"local p, err = SF.parse_form(SF.json_decode({lua_string(json.dumps(values))}), spec); "
            "io.write(SF.json_encode({p or false, err or false}))")
    return json.loads(lua(code, json.dumps(caps)))


def test_parse_form_leaves_defaults_out():
    p, err = parse_form({"caption": " steps, on gravel ", "method": "NAG", "beta": "2", "seed": "42"})
    assert err is False
    assert p == {"caption": "steps, on gravel", "method": "nag", "beta": 2.0, "seed": 42, "negatives": "layers",
                 "count": 1}  # no alpha, no steps: the model's defaults
    p, _ = parse_form({"caption": "x"})
    assert p["seed"] == 1234 and "method" not in p


@pytest.mark.parametrize("values,message", [
    ({"caption": "  "}, "The caption is empty"),
    ({"caption": "x", "seed": "1.5"}, 'Seed must be a whole number between 0 and 9223372036854775807, got "1.5".'),
    ({"caption": "x", "steps": "0"}, 'Steps must be a whole number between 1 and 200, got "0".'),
    ({"caption": "x", "alpha": "-1"}, 'Alpha must be a number between 0 and 100, got "-1".'),
    ({"caption": "x", "method": "dual"}, 'Unknown method "dual". Use independent, nag (or leave it empty'),
    ({"caption": "x", "method": "reference"}, 'Method "reference" is not available: no ControlNet'),
    ({"caption": "x", "negatives": "some"}, "Negatives must be layers, selection or none"),
])
def test_parse_form_refuses(values, message):
    p, err = parse_form(values)
    assert p is False and err.startswith(message)


def test_parse_form_leaves_room_for_the_variations_seeds():
    spec = "{negatives = true, count = true}"
    p, err = parse_form({"caption": "x", "seed": "9223372036854775805", "count": "3"}, spec=spec)
    assert err is False and (p["seed"], p["count"]) == (9223372036854775805, 3)  # up to the engine's bound
    p, err = parse_form({"caption": "x", "seed": "9223372036854775806", "count": "3"}, spec=spec)
    assert p is False and err == ("Seed 9223372036854775806 leaves no room for 3 variations (they use the seed "
                                  "and the 2 after it, up to 9223372036854775807); choose a smaller seed.")
    p, err = parse_form({"caption": "x", "seed": "9223372036854775806", "count": "2"}, spec=spec, caps=None)
    assert err is False  # without the engine's bounds, Lua's own: no wrap to a negative seed


def test_parse_form_without_capabilities_checks_only_kinds():
    p, err = parse_form({"caption": "x", "method": "dual", "alpha": "500", "steps": "1000"}, caps=None)
    assert err is False and p["method"] == "dual" and p["alpha"] == 500.0 and p["steps"] == 1000
    p, err = parse_form({"caption": "x", "steps": "2.5"}, caps=None)
    assert err == 'Steps must be a whole number, got "2.5".'
    for text in ("1e999", "-1e400", "nan", "inf"):
        p, err = parse_form({"caption": "x", "beta": text}, caps=None)
        assert err == f'Beta must be a number, got "{text}".'


def test_parse_form_for_the_reference_action():
    p, err = parse_form({"caption": "x", "beta": "0.5"}, spec='{audio = "reference", fixed_method = "reference"}')
    assert err is False and p["method"] == "reference" and p["negatives"] == "none"


def candidates(windows: bool, env: dict, subdirs: dict) -> list:
    code = (f"local env, dirs = table.unpack(SF.json_decode(io.read('a'))); "
            f"local list = SF.client_candidates({str(windows).lower()}, function(k) return env[k] end, "
            "function(p) return dirs[p] or {} end); "
            "local out = {}; for i, c in ipairs(list) do out[i] = {c.path, c.kind} end; io.write(SF.json_encode(out))")
    return [tuple(c) for c in json.loads(lua(code, json.dumps([env, subdirs])))]


def test_client_candidates_beyond_path_on_macos():
    # REAPER started from the Dock: PATH is /usr/bin:/bin
    got = candidates(False, {"PATH": "/usr/bin:/bin", "HOME": "/Users/ana"}, {})
    exes = [p for p, kind in got if kind == "exe"]
    assert exes[:3] == ["/usr/bin/stepfoley", "/bin/stepfoley", "/Users/ana/stepfoley-venv/bin/stepfoley"]
    assert "/Users/ana/.local/bin/stepfoley" in exes and "/opt/homebrew/bin/stepfoley" in exes
    assert got.index(("/Users/ana/stepfoley-venv/bin/stepfoley", "exe")) < got.index(("/usr/bin/python3", "python"))
    # pip install --user with python.org's or Homebrew's Python, newest first (by version, not as text)
    got = candidates(False, {"PATH": "/usr/bin:/bin", "HOME": "/Users/ana"},
                     {"/Users/ana/Library/Python": ["3.9", "3.12", "3.11"]})
    user = [p for p, kind in got if "/Library/Python/" in p]
    assert user == [f"/Users/ana/Library/Python/{v}/bin/stepfoley" for v in ("3.12", "3.11", "3.9")]


def test_client_candidates_on_windows_skip_the_store_alias():
    env = {"PATH": "C:\\Windows\\system32;C:\\Users\\ana\\AppData\\Local\\Microsoft\\WindowsApps",
           "USERPROFILE": "C:\\Users\\ana", "APPDATA": "C:\\Users\\ana\\AppData\\Roaming",
           "LOCALAPPDATA": "C:\\Users\\ana\\AppData\\Local", "SystemRoot": "C:\\Windows"}
    # by version, not as text ("Python39" > "Python312"): a 3.9 cannot run StepFoley
    subdirs = {"C:\\Users\\ana\\AppData\\Local\\Programs\\Python": ["Python39", "Python311", "Python312"]}
    got = candidates(True, env, subdirs)
    paths = [p for p, _ in got]
    assert "C:\\Users\\ana\\stepfoley-venv\\Scripts\\stepfoley.exe" in paths
    assert "C:\\Users\\ana\\.local\\bin\\stepfoley.exe" in paths  # pipx's default on Windows
    assert "C:\\Users\\ana\\AppData\\Local\\Programs\\Python\\Python312\\Scripts\\stepfoley.exe" in paths
    assert not any("WindowsApps\\python" in p for p in paths)  # the Store alias opens the Store
    pythons = [p for p, kind in got if kind == "python"]
    assert pythons[-4:] == ["C:\\Users\\ana\\AppData\\Local\\Programs\\Python\\Python312\\python.exe",
                            "C:\\Users\\ana\\AppData\\Local\\Programs\\Python\\Python311\\python.exe",
                            "C:\\Users\\ana\\AppData\\Local\\Programs\\Python\\Python39\\python.exe",
                            "C:\\Windows\\py.exe"]
    assert lua('io.write(tostring(SF.is_store_alias("C:\\\\Users\\\\a\\\\AppData\\\\Local\\\\Microsoft'
               '\\\\WindowsApps\\\\python.exe")))') == "true"


@pytest.mark.parametrize("client, refused", [("C:\\tools\\stepfoley.bat", True), ("C:\\tools\\run.CMD", True),
                                             ("C:\\venv\\Scripts\\stepfoley.exe", False)])
def test_a_batch_file_as_the_client_is_refused(client, refused):
    # cmd.exe, which runs a batch file, changes "!" and "^" inside quotes (delayed expansion, CALL):
    # a project path "Wow! Foley" would reach the client changed
    out = lua("reaper.file_exists = function() return true end; "
              f"local prefix, err = SF.client_prefix({{client = {json.dumps(client)}}}); "
              "io.write(prefix and 'accepted' or err)")
    assert (out != "accepted") == refused
    if refused:
        assert "batch file (.bat or .cmd)" in out and "stepfoley.exe" in out


@pytest.mark.parametrize("stepfoley,want,role", [(True, True, "auto"), (True, False, "exclude"),
                                                  (False, True, "include"), (False, False, "auto")])
def test_role_for(stepfoley, want, role):
    assert lua(f"io.write(SF.role_for({str(stepfoley).lower()}, {str(want).lower()}))") == role


def test_job_folder_time():
    out = lua("io.write(tostring(SF.job_folder_time('20240102-030405-00ab12cd') == os.time({year = 2024, month = 1, "
              "day = 2, hour = 3, min = 4, sec = 5})), ' ', tostring(SF.job_folder_time('my stems')))")
    assert out == "true nil"


def test_methods_for_replace_and_reference():
    code = ("local caps = SF.json_decode(io.read('a')); "
            "local a = SF.negating_method(caps, 'independent'); local b = SF.negating_method(nil, 'independent'); "
            "local c, why = SF.reference_method(caps); "
            "io.write(SF.json_encode({a, b, c or false, why}))")
    a, b, c, why = json.loads(lua(code, json.dumps(CAPS)))
    assert (a, b, c) == ("nag", "independent", False) and "reference: no ControlNet" in why


@pytest.mark.parametrize("methods", [
    [("independent", None), ("negative_prompt", None), ("nag", "existing"), ("text_boost", None), ("dual", "existing")],
    [("independent", None), ("nag", "existing")],
], ids=["five", "two"])
def test_replace_without_a_stored_method_takes_the_models_default(methods):
    # a layer made with the Method field left empty stores none: the model's default (nag)
    # comes first, not the last method that hears the layers, nor no method at all
    caps = {**CAPS, "methods": [{"name": n, "audio": a, "available": True} for n, a in methods]}
    out = lua("local caps = SF.json_decode(io.read('a')); local a, why = SF.negating_method(caps, nil); "
              "io.write(SF.json_encode({a or false, why or false, (SF.negating_method(caps, 'independent'))}))",
              json.dumps(caps))
    assert json.loads(out) == ["nag", False, "nag"]


@pytest.mark.parametrize("caption, bounds, hint", [
    ("steps on gravel", None, "steps on gravel"),
    ("é" * 250, None, "é" * 200),  # 500 bytes: cut after the 200th character, not byte
    ("é足音abc", {"name_hint_chars": 5}, "é足音ab"),  # the bound the engine publishes
    ("足" * 201, {"caption_chars": 1000}, "足" * 200),  # capabilities without it: 200
])
def test_name_hint_is_the_caption_within_the_engines_bound(caption, bounds, hint):
    caps = {**CAPS, "bounds": bounds} if bounds else None
    read_caps = "SF.json_decode(io.read('a'))" if caps else "nil"
    code = f"io.write(SF.name_hint({lua_string(caption)}, {read_caps}))"
    assert lua(code, json.dumps(caps)) == hint


@pytest.mark.parametrize("heard", [True, False, None])
def test_item_notes_say_when_negative_captions_were_not_heard(heard):
    meta = {"caption": "rain", "method": "negative_prompt", "seed": 4, "negatives": {"mode": "layers", "tracks": ["wind"]},
            "region": {"video": "/v.mp4", "file_in": 0, "file_out": 2, "playrate": 1}, "stem_path": "/s.wav",
            "engine": {"alpha": 1, "negative_caption_heard": heard}}
    notes = lua("io.write(SF.describe(SF.json_decode(io.read('a'))))", json.dumps(meta))
    assert "negatives: layers (wind)" in notes
    assert ("were not heard" in notes) == (heard is False)


def fit_request(request: dict, change: str = "") -> tuple:
    code = ("local log = {}; reaper.ShowConsoleMsg = function(m) log[#log + 1] = m end; "
            f"local r = SF.json_decode(io.read('a')); {change}; local fitted, err = SF.fit_request(r); "
            "io.write(SF.json_encode({fitted or false, err or false, table.concat(log)}))")
    return tuple(json.loads(lua(code, json.dumps(request))))


def test_a_request_that_would_not_fit_one_message_leaves_out_its_last_previous_captions():
    """64 layers with long captions, in several scripts (each within the engine's 1000
    characters): the first ones that fit go, as the client measures the request."""
    from stepfoley.bridge.client import request_payload
    from stepfoley.bridge.protocol import MAX_REQUEST_BYTES

    scripts = ["footsteps on wet gravel, slow " * 16, "Schritte auf nassem Kies — " * 18, "濡れた砂利の上の足音、" * 45]
    previous = [f"{i:02d} " + scripts[i % 3][:480] for i in range(64)]
    request = {"protocol": 1, "caption": "rain", "previous_captions": previous, "output_dir": "/tmp/x"}
    fitted, err, log = fit_request(request)
    assert err is False
    kept = fitted["previous_captions"]
    assert 0 < len(kept) < 64 and kept == previous[:len(kept)]
    assert len(request_payload(fitted).encode()) <= MAX_REQUEST_BYTES
    assert len(request_payload({**fitted, "previous_captions": previous[:len(kept) + 1]}).encode()) > MAX_REQUEST_BYTES
    assert f"only the first {len(kept)} of the 64 captions" in log
    small = {**request, "previous_captions": previous[:3]}
    assert fit_request(small) == (small, False, "")
    fitted, err, _ = fit_request({**request, "caption": "x" * MAX_REQUEST_BYTES})
    assert fitted is False and "Shorten the caption" in err
    fitted, err, _ = fit_request(request, "r.alpha = math.huge")  # JSON cannot hold it
    assert fitted is False and "cannot be written" in err


def test_a_path_that_is_not_utf8_is_refused_naming_it():
    # a Latin-1 file name on Linux: the engine failed on the request with "can't decode byte 0xe9"
    request = {"protocol": 1, "caption": "rain", "output_dir": "/tmp/x", "region": {"video": "/m"}}
    fitted, err, _ = fit_request(request, r"r.region.video = '/media/archive/caf\233 cr\195\168me.mp4'")
    assert fitted is False
    assert err.startswith('"/media/archive/caf? crème.mp4" is not UTF-8 text') and "Rename it" in err
    assert fit_request(request, r"r.region.video = '/media/café.mp4'")[1] is False  # UTF-8: fine


def test_a_stem_too_long_at_the_takes_rate_says_whose_rate_it_is():
    # extend and repair are made at the take's own rate (96 kHz in a 48 kHz project, say): the
    # length is checked at that rate again, and said as the take's
    out = lua("io.write(SF.region_length_problem({file_in = 0, file_out = 250, project_start = 0, project_end = 250}, "
              "false, nil, 192000, \"the take's\"))")
    assert "at most 233.0 s can be made at once at the take's 192000 Hz." in out, out
    # a stereo take's stem has two channels: half as long (the engine counts them too)
    out = lua("io.write(SF.region_length_problem({file_in = 0, file_out = 150, project_start = 0, project_end = 150}, "
              "false, nil, 192000, \"the take's\", 2))")
    assert "at most 116.5 s can be made at once at the take's 192000 Hz in 2 channels." in out, out


@pytest.mark.parametrize("engine, reason", [
    ("{loudness_curve_gain_db = {-20, 29.95}}", "too faint to lift onto it"),
    ("{loudness_curve_gain_db = {-59.95, 3}}", "more than 60 dB under the model's sound"),
    ("{loudness_curve_gain_db = {-20, 3}}", "louder than the stem's peaks allow"),
    # a stem brought onto the curve again (varispeed, a rate below the model's), within what the
    # first pass left of the bounds: that pass reached them
    ("{loudness_curve_gain_db = {-50, 3}, loudness_curve_output_correction_db = {-10, 0}}", "more than 60 dB under"),
    ("{loudness_curve_gain_db = {-5, 22}, loudness_curve_output_correction_db = {-2, 8}}", "too faint to lift"),
    ("{loudness_curve_gain_db = {-50, 22}, loudness_curve_output_correction_db = {-4, 3}}", "louder than the stem's"),
    ("{}", "louder than the stem's peaks allow"),  # an engine that sent no range
])
def test_a_missed_curve_is_blamed_on_the_bound_that_held_it(engine, reason):
    assert reason in lua(f"io.write(SF.why_the_curve_was_missed({engine}))")


def test_the_librarys_fallback_bounds_are_the_protocols():
    """Where an engine publishes no bounds, the library uses its own copies: they must be
    stepfoley.request's (read from both sides, no value copied into this test)."""
    from stepfoley import request

    from stepfoley.bridge import protocol

    out = lua("io.write(SF.json_encode({SF.MAX_NAME_HINT_CHARS, SF.MAX_PREVIOUS_CAPTIONS, SF.MAX_LOUDNESS_POINTS, "
              "SF.MAX_REQUEST_BYTES, SF.variations_per_job(nil), SF.REGION_SECONDS, SF.STEM_SECONDS, SF.STEM_BYTES, "
              "SF.SAMPLE_RATES}))")
    assert json.loads(out) == [request.MAX_NAME_HINT_CHARS, request.MAX_PREVIOUS_CAPTIONS,
                               request.MAX_LOUDNESS_POINTS, protocol.MAX_REQUEST_BYTES, request.MAX_VARIATIONS,
                               request.BOUNDS["region_seconds"], request.MAX_STEM_SECONDS, request.MAX_STEM_BYTES,
                               list(request.SAMPLE_RATES)]
    assert request.BOUNDS["variations"] == [1, request.MAX_VARIATIONS]
    assert request.BOUNDS["name_hint_chars"] == request.MAX_NAME_HINT_CHARS
    assert request.BOUNDS["previous_captions"] == request.MAX_PREVIOUS_CAPTIONS
    assert request.BOUNDS["loudness_curve_points"] == request.MAX_LOUDNESS_POINTS
    picture = json.loads(lua("io.write(SF.json_encode({SF.MIN_PICTURE_REGION, SF.MIN_PICTURE_REGION_SECONDS, "
                             "SF.MIN_REGENERATE_S}))"))
    assert picture == [request.BOUNDS["picture_region_size"], request.BOUNDS["picture_region_seconds"],
                       request.BOUNDS["regenerate_seconds"]]
    # the envelope readings cover the longest stem at the reading step, both ends included
    step, readings = json.loads(lua("io.write(SF.json_encode({SF.CURVE_STEP_S, SF.MAX_CURVE_READINGS}))"))
    assert readings == round(request.MAX_STEM_SECONDS / step) + 1


@pytest.mark.parametrize("rate", [96000, 192000])
def test_the_longest_stem_the_library_allows_is_the_one_the_engine_writes(rate):
    """The library's own copies of the WAV header room and wav24's bytes a sample: a new track
    just shorter than the engine's largest file passes the check before the dialog, one just
    longer is refused there (1 ms either side; at 192 kHz a header of 44 bytes instead of
    WAV_HEADER_BYTES would move the limit by 7 ms)."""
    from stepfoley import request

    longest = (request.MAX_STEM_BYTES - request.WAV_HEADER_BYTES) // request.BYTES_PER_SAMPLE["wav24"] / rate
    assert request.stem_bytes(longest, rate, "wav24") <= request.MAX_STEM_BYTES
    assert request.stem_bytes(longest + 1 / rate, rate, "wav24") > request.MAX_STEM_BYTES
    # the picture plays slowly, so a 10 s region lasts `timeline` seconds on the timeline
    code = ("local out = {}; for _, timeline in ipairs(SF.json_decode(io.read('a'))) do "
            "out[#out + 1] = SF.region_length_problem({file_in = 0, file_out = 10, project_start = 0, "
            f"project_end = timeline}}, false, nil, {rate}) or '' end; io.write(SF.json_encode(out))")
    assert longest < request.MAX_STEM_SECONDS  # at these rates the file's size is the bound
    shorter, longer = json.loads(lua(code, json.dumps([longest - 1e-3, longest + 1e-3])))
    assert shorter == ""
    assert f"at most {math.floor(longest * 10) / 10:.1f} s can be made at once" in longer


def test_a_job_holds_as_many_variations_as_the_engine_publishes():
    out = lua("local caps = SF.json_decode(io.read('a')); "
              "io.write(SF.json_encode({SF.variations_per_job(caps), SF.variations_per_job({bounds = {}})}))",
              json.dumps({**CAPS, "bounds": {"variations": [1, 3]}}))
    assert json.loads(out) == [3, 8]


def test_the_library_and_the_engine_agree_on_port_phases_and_exit_codes():
    """What the Lua library knows of the engine, read from both sources (no value copied into
    this test): the default port, the progress phases it has words for, and the exit code of
    `stepfoley send` that means the engine is not running."""
    import re

    from stepfoley.bridge import client, protocol

    port, phases = json.loads(lua("local w = {}; for k in pairs(SF.PHASE_WORDS) do w[#w + 1] = k end; "
                                  "table.sort(w); io.write(SF.json_encode({SF.DEFAULT_SETTINGS.port, w}))"))
    assert port == protocol.DEFAULT_PORT
    # "queued" is the job's state before a phase; the client's own phase while the model loads
    assert client.LOADING_PHASE in phases and set(phases) - {"queued"} <= set(protocol.PHASES) | {client.LOADING_PHASE}
    assert set(protocol.PHASES) - {"starting"} <= set(phases)  # each phase said in words ("starting" is one)
    engine_lua = (h.SCRIPTS / "StepFoley_lib_engine.lua").read_text(encoding="utf-8")
    codes = {int(c) for c in re.findall(r"exit_code == (\d+)", engine_lua)}
    assert codes == {client.EXIT_NOT_RUNNING}


BLOCK = "StepFoley: rain\nmethod nag\nstem: /p/rain_002.wav"


@pytest.mark.parametrize("notes, expected", [
    ("", BLOCK),
    ("  \n", BLOCK),
    ("StepFoley: old\nmethod x\nstem: /p/rain_001.wav", BLOCK),
    ("keep -3 dB", "keep -3 dB\n\n" + BLOCK),
    ("keep -3 dB\n", "keep -3 dB\n\n" + BLOCK),
    ("keep -3 dB\n\nStepFoley: old\nstem: /p/a.wav\nand this after", "keep -3 dB\n\n" + BLOCK + "\nand this after"),
], ids=["empty", "blank", "ours", "theirs", "theirs-newline", "both"])
def test_item_notes_keep_the_artists_text_and_replace_only_stepfoleys_block(notes, expected):
    out = lua("io.write(SF.notes_with(io.read('a'), " + json.dumps(BLOCK) + "))", notes)
    assert out == expected


def test_a_picture_region_time_shorter_than_a_frame_of_the_features_is_asked_again():
    """The engine crops no frame for a shorter span (and refuses it): said in the dialog, where
    it can be typed again, and by the engine's own bound where it publishes one."""
    out = lua("local a, b = SF.parse_picture_time('1.01-1.03', 4); local c = SF.parse_picture_time('1-1.2', 4); "
              "local d, e = SF.parse_picture_time('1-1.2', 4, {bounds = {picture_region_seconds = 0.5}}); "
              "io.write(SF.json_encode({a == nil, b, c, d == nil, e}))")
    short, said, ok, published_short, published_said = json.loads(out)
    assert short and said.startswith("The picture region must apply for at least 0.16 s")
    assert ok == [1, 1.2] and published_short and "at least 0.5 s" in published_said


def test_the_picture_region_time_is_checked_in_seconds_of_picture_where_the_region_is_known():
    """The engine's bound is in seconds of picture: at playrate 0.25 a 0.3 s stretch of the
    selection is 0.075 s of picture, which the dialog let through and the engine refused after
    the whole generate dialog."""
    out = lua("local slow = {project_start = 10, project_end = 14, file_in = 1, file_out = 2}; "
              "local fast = {project_start = 0, project_end = 1, file_in = 0, file_out = 4}; "
              "local a, why = SF.picture_fields({region = {0, 0, 1, 1}, time = {1, 1.3}}, 10, slow); "
              "local b = SF.picture_fields({region = {0, 0, 1, 1}, time = {1, 2}}, 10, slow); "
              "local c = SF.picture_fields({region = {0, 0, 1, 1}, time = {0.1, 0.2}}, 0, fast); "
              "io.write(SF.json_encode({a == nil, why, b.picture_region_time, c.picture_region_time}))")
    refused, why, slow_ok, fast_ok = json.loads(out)
    assert refused and why.startswith("The picture region applies for 0.300 s of the time selection, which is "
                                      "0.075 s of the picture at the speed it plays here; make it at least 0.640 s")
    assert slow_ok == [1, 2] and fast_ok == pytest.approx([0.1, 0.2])


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full (a device whose every write finds the disk full)")
@pytest.mark.parametrize("size", [10, 100_000])  # within the write buffer (the close fails) and past it (the write)
def test_write_file_atomic_says_a_full_disk_and_leaves_no_file(tmp_path, size):
    """The write's and the close's failures were ignored: a cut-off request was renamed into place
    and read by the client as a broken request, not as the disk being full. Here the temporary
    name leads to /dev/full, which answers every write as a full disk does."""
    path = tmp_path / "request.json"
    (tmp_path / "request.json.part").symlink_to("/dev/full")
    out = lua(f"local ok, err = SF.write_file_atomic({json.dumps(str(path))}, string.rep('x', {size})); "
              "io.write(tostring(ok), '|', tostring(err))")
    assert out.startswith("false|") and "No space left on device" in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == []
