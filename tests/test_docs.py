"""Every Python example in README.md and docs/ runs, as written, against real nodes, and so
does every shell example marked as one.

An example is a fenced ``python`` block. An HTML comment just before it may say what it needs:

    <!-- example: serve=9000,9001 expect="alice: hello" -->

``serve``: development nodes the test starts for the example, one per port named (the example's
port numbers are replaced by the ports the nodes got; any other port 9000-9009 the example names
is replaced by a free one, so an example that starts its own node runs beside others).
``expect``: text the example prints; once it has, the example passed (examples that serve or
subscribe forever are stopped then). Without it the example must exit with status 0.

A fenced ``sh`` block is an example when its comment says ``sh``
(``<!-- example: sh expect="..." -->``): bash runs it in an empty directory, with the
virtualenv's commands first on the PATH and a state directory of its own; its ports
(9000-9009, 5555-5559, 7000-7009) are replaced by free ones, and everything it started in the
background is killed at the end.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from roomd import Node
from tests.cluster_support import free_ports
from tests.support import SECRET, make_config

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"(?:<!--\s*example:(?P<directives>[^>]*)-->\s*\n)?```(?P<lang>python|sh)\n(?P<code>.*?)```",
    re.S,
)
DIRECTIVE = re.compile(r'(\w+)=("([^"]*)"|\S+)')
PORT = re.compile(r"\b900\d\b")
SHELL_PORT = re.compile(r"\b(?:900\d|555\d|700\d)\b")
EXAMPLE_TIMEOUT = 30.0


@attrs.frozen
class Example:
    path: Path
    line: int
    code: str
    serve: tuple[int, ...]
    expect: str | None
    shell: bool = False

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def examples() -> list[Example]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in BLOCK.finditer(text):
            comment = match.group("directives") or ""
            directives = {
                m.group(1): m.group(3) if m.group(3) is not None else m.group(2)
                for m in DIRECTIVE.finditer(comment)
            }
            shell = match.group("lang") == "sh"
            if shell and not re.match(r"\s*sh\b", comment):
                continue  # a command line to read, not an example
            serve = tuple(int(p) for p in directives.get("serve", "").split(",") if p)
            line = text.count("\n", 0, match.start("code"))
            code, expect = match.group("code"), directives.get("expect")
            found.append(Example(path, line, code, serve, expect, shell))
    return found


EXAMPLES = examples()


def test_the_docs_have_examples() -> None:
    assert len(EXAMPLES) >= 8, [e.id for e in EXAMPLES]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
async def test_example_runs(example: Example, tmp_path: Path) -> None:
    if example.shell:
        await _run_shell(example, tmp_path)
        return
    mentioned = sorted({int(p) for p in PORT.findall(example.code)})
    fresh = iter(free_ports(len(mentioned)))
    with trio.fail_after(EXAMPLE_TIMEOUT + 10):
        async with trio.open_nursery() as nursery:
            ports: dict[int, int] = {}
            for wanted in mentioned:
                if wanted in example.serve:
                    node = Node(make_config(node={"name": f"docs{wanted}"}))
                    ports[wanted] = await nursery.start(node.run)
                else:
                    ports[wanted] = next(fresh)
            code = PORT.sub(lambda m: str(ports[int(m.group())]), example.code)
            output = await _run(code, example.expect, tmp_path)
            nursery.cancel_scope.cancel()
    if example.expect is not None:
        assert example.expect in output, output


async def _run(code: str, expect: str | None, tmp_path: Path) -> str:
    """Run ``code`` as a script; its output, once ``expect`` is in it (or it exited)."""
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "ROOMD_SECRET": SECRET, "PYTHONPATH": str(ROOT)}
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(script)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    output = b""
    try:
        with trio.move_on_after(EXAMPLE_TIMEOUT):
            async for chunk in proc.stdout:
                output += chunk
                if expect is not None and expect.encode() in output:
                    return output.decode()
        status = await _wait(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
    text = output.decode()
    assert status == 0, text
    return text


async def _wait(proc: Any) -> int | None:
    with trio.move_on_after(5):
        return int(await proc.wait())
    return None


async def _run_shell(example: Example, tmp_path: Path) -> None:
    mentioned = sorted(set(SHELL_PORT.findall(example.code)))
    ports = dict(zip(mentioned, map(str, free_ports(len(mentioned))), strict=True))
    code = SHELL_PORT.sub(lambda m: ports[m.group()], example.code)
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "example.sh").write_text("set -e\n" + code)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "ROOMD_STATE_DIR": str(tmp_path / "state"),
        "ROOMD_SECRET": SECRET,
    }
    with trio.fail_after(EXAMPLE_TIMEOUT + 10):
        proc = await trio.lowlevel.open_process(
            ["bash", str(tmp_path / "example.sh")],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its background jobs too are killed at the end
        )
        assert proc.stdout is not None
        output = b""
        try:
            with trio.move_on_after(EXAMPLE_TIMEOUT):
                async for chunk in proc.stdout:
                    output += chunk
                    if example.expect is not None and example.expect.encode() in output:
                        break
            status = proc.returncode if example.expect is not None else await _wait(proc)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await proc.wait()
    text = output.decode(errors="replace")
    if example.expect is not None:
        assert example.expect in text, text
    else:
        assert status == 0, text
