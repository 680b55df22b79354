"""Reading examples from docs as people write them: Markdown, reST, docstrings.

Two kinds of example: `>>>` examples (doctest's), and prompt-less code
blocks, as tutorials write them (keras.io's guides among them): a
```` ```python ```` fence (or `py`, `python3`, `py3`), or a reST
`.. code-block:: python`, whose first line is not a `>>>` prompt. A file's
code blocks and `>>>` examples run in the order of the file, in one
namespace, as one script (`read_doc`).

Each reader returns the file's text as doctest should see it, line for
line (so failures name the file's own line numbers): fence lines become
blank lines, so an example's expected output ends at a closing fence even
with no blank line before it; code blocks in another language, prompt-less
blocks and blocks opted out are blanked, so their `>>>` lines do not run;
blockquote markers are removed.

A block opts out with `notest` in its fence's info string
(```` ```python notest ````, as pytest-markdown-docs spells it) or with an
HTML comment `<!-- skip: next -->` before it (Sybil's spelling; in reST the
comment `.. skip: next`). A prompt-less block whose first line is a doctest
directive (`# doctest: +SKIP_TORCH`) is skipped as that example would be.

- Markdown (`.md`, `.markdown`): fences of ``` or ~~~ (three or more), with
  any info string: examples run in fences whose language is Python's
  (`PYTHON_LANGUAGES`, or none); MkDocs attributes (```py title="x.py"``),
  MyST (```{code-block} pycon``) and Pandoc (```{.python}``) forms are read
  too. Fences and examples work inside list items and blockquotes (`> `).
  Examples outside fences run too, as doctest reads any text file.
- reST (`.rst`, `.rest`): `.. code-block::` (and `.. code::`,
  `.. sourcecode::`) bodies run when their language is Python's; `::`
  literal blocks and doctest blocks run unless a `.. highlight::` directive
  named another language; `.. doctest::` bodies run.
- Docstrings are Markdown without blockquotes (Keras writes them so); their
  prompt-less fences do not run (docstrings show fragments so: Keras's do).
- Any other file is read as doctest reads a text file.

>>> from keras_policy_ext.cli.docsource import markdown_text
>>> markdown_text("```python\\n>>> 1 + 1\\n2\\n```\\n```bash\\n>>> not run\\n```").splitlines()
['', '>>> 1 + 1', '2', '', '', '', '']
"""

from __future__ import annotations

import dataclasses
import doctest
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

EXTENSIONS = (".md", ".rst", ".py")
MARKDOWN = (".md", ".markdown")
RST = (".rst", ".rest")
# Info strings (fences) and languages (reST) whose `>>>` examples run; "" is none given.
PYTHON_LANGUAGES = frozenset(
    ["", "python", "py", "python3", "py3", "pycon", "python-console", "doctest", "default"]
)
# Languages whose prompt-less blocks run as code (a console's or untagged blocks do not).
CODE_LANGUAGES = frozenset(["python", "py", "python3", "py3"])
NO_TEST = "notest"  # the info-string flag that opts a fence out
_SKIP_NEXT_MD = re.compile(r" {0,3}<!--+\s*skip:\s*next\s*-*->\s*$")
_SKIP_NEXT_RST = re.compile(r" *\.\.\s+skip:\s*next\s*$")

_QUOTE = re.compile(r" {0,3}>(?!>>) ?")  # one blockquote marker, never a `>>>` prompt
_FENCE = re.compile(
    r"(?P<lead> {0,3}(?:(?:[-+*]|\d{1,9}[.)])(?: +|$))*)(?P<pad> *)"
    r"(?P<fence>`{3,}|~{3,})(?P<info>.*)$"
)
_CLOSING = re.compile(r" *(?P<fence>`{3,}|~{3,}) *$")
_PROMPT = re.compile(r" *>>>( |$)")
_DIRECTIVE = re.compile(r"(?P<indent> *)\.\.\s+(?P<name>[\w:-]+)::(?P<arg>.*)$")
_CODE_DIRECTIVES = ("code-block", "code", "sourcecode")


@dataclasses.dataclass(frozen=True)
class CodeBlock:
    """A prompt-less code block: its source and the file line its first line is on (1-based)."""

    lineno: int
    source: str


def _is_code(lines: Sequence[str]) -> bool:
    """Whether a Python block's lines are code, not `>>>` examples (its first line decides)."""
    first = next((line for line in lines if line.strip()), None)
    return first is not None and not _PROMPT.match(first)


def language(info: str) -> str:
    """The language a fence's info string names, lowercased ("" for none).

    >>> from keras_policy_ext.cli.docsource import language
    >>> [language(i) for i in ["python", 'py title="a.py"', "{code-block} pycon", "{.python}", ""]]
    ['python', 'py', 'pycon', 'python', '']
    """
    words = [w.lstrip(".") for w in info.replace("{", " ").replace("}", " ").split()]
    if words and words[0] in (*_CODE_DIRECTIVES, "code-cell"):
        words = words[1:]
    return words[0].lower() if words else ""


@dataclasses.dataclass
class _Fence:
    char: str
    length: int
    indent: int  # the fence's column: as many leading spaces come off its content
    depth: int  # blockquote depth
    runs: bool  # a Python fence: its examples run
    code: bool  # its language's prompt-less blocks run as code
    start: int  # the index of its first content line in the output


def _unquote(line: str, limit: int | None) -> tuple[int, str]:
    """Removes up to `limit` blockquote markers (all with None): (how many, the rest)."""
    depth = 0
    while limit is None or depth < limit:
        match = _QUOTE.match(line)
        if match is None:
            break
        line = line[match.end() :]
        depth += 1
    return depth, line


def _dedent(line: str, spaces: int) -> str:
    return line[min(spaces, len(line) - len(line.lstrip(" "))) :]


def markdown_text(text: str, blockquotes: bool = True) -> str:
    """Markdown as doctest should read it, line for line (see the module's docstring).

    Inside an example (from its `>>>` line to the next blank line) only as
    many blockquote markers come off as its prompt line had, so output
    that starts with `>` stays.
    """
    return _markdown(text, blockquotes)[0]


def _close(fence: _Fence, out: list[str], blocks: list[CodeBlock]) -> None:
    """A fence ends: a prompt-less Python block becomes a code block, its lines blanked."""
    lines = out[fence.start :]
    if fence.runs and _is_code(lines):
        if fence.code:
            blocks.append(CodeBlock(fence.start + 1, "\n".join(lines) + "\n"))
        out[fence.start :] = [""] * len(lines)


def _markdown(text: str, blockquotes: bool = True) -> tuple[str, list[CodeBlock]]:
    """Markdown's doctest text (`markdown_text`) and its prompt-less code blocks."""
    out: list[str] = []
    blocks: list[CodeBlock] = []
    fence: _Fence | None = None
    skip_next = False  # `<!-- skip: next -->` seen: the next fence does not run
    example_depth: int | None = None  # blockquote depth of the example being read
    for line in text.splitlines():
        if fence is not None:
            depth, rest = _unquote(line, fence.depth)
            if depth == fence.depth:
                closing = _CLOSING.match(rest)
                if closing and closing["fence"][0] == fence.char:
                    if len(closing["fence"]) >= fence.length:
                        _close(fence, out, blocks)
                        fence = None
                        out.append("")
                        continue
                out.append(_dedent(rest, fence.indent) if fence.runs else "")
                continue
            _close(fence, out, blocks)
            fence = None  # the blockquote holding the fence ended, and the fence with it
        if not line.strip():
            example_depth = None
            out.append("")
            continue
        limit = example_depth if example_depth is not None else (None if blockquotes else 0)
        depth, rest = _unquote(line, limit)
        if _SKIP_NEXT_MD.match(rest):
            skip_next = True
            out.append("")
            continue
        opening = _FENCE.match(rest)
        if opening and not (opening["fence"][0] == "`" and "`" in opening["info"]):
            lang = language(opening["info"])
            runs = lang in PYTHON_LANGUAGES and not skip_next
            runs = runs and NO_TEST not in opening["info"].replace("{", " ").split()
            fence = _Fence(
                char=opening["fence"][0],
                length=len(opening["fence"]),
                indent=len(opening["lead"]) + len(opening["pad"]),
                depth=depth,
                runs=runs,
                code=lang in CODE_LANGUAGES,
                start=len(out) + 1,
            )
            skip_next = False
            example_depth = None
            out.append("")
            continue
        if not rest.strip():
            example_depth = None
        elif example_depth is None and _PROMPT.match(rest):
            example_depth = depth
        out.append(rest)
    if fence is not None:
        _close(fence, out, blocks)
    return "\n".join(out) + "\n", blocks


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """The index after the indented block that follows `lines[start]`."""
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > indent):
        end += 1
    return end


def rst_text(text: str) -> str:
    """reST as doctest should read it, line for line: other languages' blocks blanked.

    >>> from keras_policy_ext.cli.docsource import rst_text
    >>> rst_text(".. code-block:: bash\\n\\n   >>> not run\\n\\n>>> 1\\n1\\n").splitlines()
    ['.. code-block:: bash', '', '', '', '>>> 1', '1']
    """
    return _rst(text)[0]


def _rst_code(lines: list[str], start: int, end: int) -> CodeBlock | None:
    """A code-block directive's body (`lines[start:end]`, options first) as a code block."""
    body = start
    while body < end and (not lines[body].strip() or lines[body].lstrip().startswith(":")):
        body += 1
    content = lines[body:end]
    while content and not content[-1].strip():
        content.pop()
    if not _is_code(content):
        return None
    indent = min(_indent(line) for line in content if line.strip())
    return CodeBlock(body + 1, "".join(line[indent:] + "\n" for line in content))


def _rst(text: str) -> tuple[str, list[CodeBlock]]:
    """reST's doctest text (`rst_text`) and its prompt-less code blocks."""
    lines = text.expandtabs().splitlines()
    out = list(lines)
    blocks: list[CodeBlock] = []
    highlight = "python"
    skip_next = False  # `.. skip: next` seen: the next code block does not run
    i = 0
    while i < len(lines):
        if _SKIP_NEXT_RST.match(lines[i]):
            skip_next = True
            i += 1
            continue
        directive = _DIRECTIVE.match(lines[i])
        if directive:
            name, args = directive["name"].lower(), directive["arg"].split()
            if name == "highlight":
                highlight = args[0].lower() if args else "python"
            elif name in _CODE_DIRECTIVES:
                end = _block_end(lines, i, len(directive["indent"]))
                lang = args[0].lower() if args else highlight
                block = _rst_code(lines, i + 1, end) if lang in PYTHON_LANGUAGES else None
                if block is not None and args and lang in CODE_LANGUAGES and not skip_next:
                    blocks.append(block)
                if lang not in PYTHON_LANGUAGES or block is not None or skip_next:
                    out[i + 1 : end] = [""] * (end - i - 1)
                skip_next = False
                i = end
                continue
        elif lines[i].rstrip().endswith("::") and highlight not in PYTHON_LANGUAGES:
            end = _block_end(lines, i, _indent(lines[i]))
            out[i + 1 : end] = [""] * (end - i - 1)
            i = end
            continue
        i += 1
    return "\n".join(out) + "\n", blocks


def read_doc(path: str, text: str) -> tuple[str, list[CodeBlock]]:
    """A doc file's text as doctest should read it, and its prompt-less code blocks.

    >>> from keras_policy_ext.cli.docsource import read_doc
    >>> text, blocks = read_doc("a.md", "Prose.\\n\\n```python\\nx = 1\\n```\\n")
    >>> blocks
    [CodeBlock(lineno=4, source='x = 1\\n')]
    """
    suffix = Path(path).suffix.lower()
    if suffix in MARKDOWN:
        return _markdown(text)
    if suffix in RST:
        return _rst(text)
    return text, []


def doctest_text(path: str, text: str) -> str:
    """A doc file's text as doctest should read it, by the file's extension."""
    return read_doc(path, text)[0]


class DocstringParser(doctest.DocTestParser):
    """doctest's parser, reading docstrings as Markdown: a fence ends an example's output."""

    def get_doctest(self, string, globs, name, filename, lineno):  # noqa: D102
        return super().get_doctest(
            markdown_text(string, blockquotes=False), globs, name, filename, lineno
        )


def read_examples(path: str, text: str | None = None) -> list[doctest.Example]:
    """The examples of a Markdown, reST or other text file, as they will run.

    >>> import os, tempfile
    >>> from keras_policy_ext.cli.docsource import read_examples
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "doc.md")
    ...     with open(path, "w") as f:
    ...         _ = f.write("~~~pycon\\n>>> 1 + 1\\n2\\n~~~\\n")
    ...     [(e.source, e.want, e.lineno) for e in read_examples(path)]
    [('1 + 1\\n', '2\\n', 1)]
    """
    if text is None:
        text = Path(path).read_text(encoding="utf-8")
    return doctest.DocTestParser().get_examples(doctest_text(path, text), os.path.basename(path))


def expand_paths(paths: Sequence[str]) -> list[str]:
    """Replaces each directory by its `.md`, `.rst` and `.py` files, sorted.

    >>> import os, tempfile
    >>> from keras_policy_ext.cli.docsource import expand_paths
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     for name in ("b.md", "a.py", "c.txt"):
    ...         open(os.path.join(tmp, name), "w").close()
    ...     [os.path.basename(p) for p in expand_paths([tmp, "README.md"])]
    ['a.py', 'b.md', 'README.md']
    """
    return [p for path in paths for p in _expand(path)]


def _expand(path: str) -> Iterator[str]:
    if not os.path.isdir(path):
        yield path
        return
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        found += [os.path.join(root, f) for f in files if f.endswith(EXTENSIONS)]
    yield from sorted(found)


def _problem(path: str) -> str | None:
    """Why `path` cannot be read as a doc file, or None."""
    if not os.path.exists(path):
        return "no such file"
    if not os.path.isfile(path):
        return "not a file"
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})"
    if path.endswith(".py"):
        try:
            compile(text, path, "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as e:
            where = f" (line {e.lineno})" if getattr(e, "lineno", None) else ""
            return f"{type(e).__name__}: {getattr(e, 'msg', e)}{where}"
    return None


def check_files(paths: Sequence[str]) -> list[str]:
    """The files to run (directories expanded); `ValueError` naming every one that cannot be.

    A missing or unreadable file, one that is not UTF-8, a `.py` file that
    does not compile (compiled, never run) and a directory holding no doc
    file are refused, all of them at once, before anything runs.

    >>> from keras_policy_ext.cli.docsource import check_files
    >>> check_files(["README.md", "no_such.md"])
    Traceback (most recent call last):
    ...
    ValueError: cannot run the examples of 1 file:
      no_such.md: no such file
    """
    problems, files = [], []
    for path in paths:
        found = list(_expand(path))
        if not found:
            problems.append(f"{path}: no .md, .rst or .py file under this directory")
        files += found
    problems += [f"{f}: {p}" for f in files if (p := _problem(f)) is not None]
    if problems:
        raise ValueError(
            f"cannot run the examples of {len(problems)} file{'s' * (len(problems) != 1)}:\n  "
            + "\n  ".join(problems)
        )
    return files
