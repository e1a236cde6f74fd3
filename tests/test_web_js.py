"""roomd.js: its tests (Node's test runner against real node processes), its close-code table,
its TypeScript declarations and its npm package, all from one pytest run."""

from __future__ import annotations

import json
import re
import shutil
import sys

from roomd.protocol._close import CLOSE_CODES, should_reconnect
from tests.web_support import JS_TESTS, WEB, missing, node_argv, run, tsc

WEB_SOURCES = ("roomd/web/**/*.{js,ts,css,html,json}", "tests/js/*.{mjs,ts,json}")
JS_SUITE_TIMEOUT = 240  # seconds for every file of tests/js (about 15 s here)


def test_js_library_against_real_nodes() -> None:
    files = sorted(str(path.relative_to(JS_TESTS)) for path in JS_TESTS.glob("*.test.mjs"))
    assert files, "no test files in tests/js"
    argv = [*node_argv(), "--test", "--test-reporter=spec", *files]
    output = run(argv, timeout=JS_SUITE_TIMEOUT, cwd=JS_TESTS, ROOMD_PYTHON=sys.executable)
    assert re.search(r"^\S* ?fail 0$", output, re.MULTILINE), output  # the runner's summary


def test_close_code_table_is_the_protocols() -> None:
    script = (
        "import { CLOSE_CODES, shouldReconnect } from './roomd.js';"
        "const probe = [null, 1005, 3000, 4499, 4500, 4777, 4999, 5000];"
        "console.log(JSON.stringify({table: CLOSE_CODES,"
        " probe: probe.map((c) => [c, shouldReconnect(c)])}));"
    )
    out = run([*node_argv(), "--input-type=module", "-e", script], timeout=30, cwd=WEB)
    data = json.loads(out)
    table = {int(code): row for code, row in data["table"].items()}
    assert set(table) == set(CLOSE_CODES)
    for code, info in CLOSE_CODES.items():
        assert table[code] == {
            "name": info.code.name,
            "reconnect": info.reconnect,
            "reason": info.reason,
            "meaning": info.meaning,
        }, code
    for code, reconnect in data["probe"]:
        assert reconnect == should_reconnect(code), code


def test_typescript_declarations() -> None:
    run([str(tsc()), "-p", str(JS_TESTS / "tsconfig.json")], timeout=120)


def test_web_sources_are_formatted() -> None:
    """Prettier's style (.prettierrc.json; `just fmt-web` applies it)."""
    prettier = JS_TESTS / "node_modules" / ".bin" / "prettier"
    if not prettier.exists():
        missing("Prettier is not installed: run `npm ci` in tests/js")
    run([str(prettier), "--check", *WEB_SOURCES], timeout=120)


def test_npm_package_holds_the_library_and_its_types() -> None:
    npm = shutil.which("npm") or missing("npm is not installed")
    out = run([npm, "pack", "--dry-run", "--json", "--ignore-scripts"], timeout=60, cwd=WEB)
    (package,) = json.loads(out[out.index("[") :])
    assert package["name"] == "roomd"
    assert {entry["path"] for entry in package["files"]} == {
        "package.json",
        "roomd.js",
        "roomd.d.ts",
    }
    manifest = json.loads((WEB / "package.json").read_text())
    assert manifest["type"] == "module"
    assert manifest["exports"]["."] == {"types": "./roomd.d.ts", "default": "./roomd.js"}
