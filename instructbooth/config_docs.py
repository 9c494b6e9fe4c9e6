"""The comments of a stage config's fields, read from its source: the CLI's help and the nodes'
tooltips come from the same lines as the library's documentation.

A field's text is the comment on its line plus the comment-only lines right below it (the
reasons behind a default):

    timestep_window: float = 0.96  # share of each trajectory whose steps may be trained on.
    #   The last two steps of SD1.5's schedule have noise std 0.040 and 0.021 ...

Read with `ast` (which lines hold which field) and `tokenize` (which comments stand where), so
a default that spans lines or holds a '#' inside a string is read right. Inherited fields get
their parent's comments.
"""

from __future__ import annotations

import ast
import functools
import inspect
import io
import textwrap
import tokenize


@functools.lru_cache(maxsize=None)
def field_docs(config_class: type) -> dict[str, str]:
    """`field name -> comment text` for every commented field of a dataclass and its bases."""
    docs: dict[str, str] = {}
    for cls in reversed(config_class.__mro__[:-1]):
        docs.update(_own_field_docs(cls))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments = _comments_by_line(source)
    body = ast.parse(source).body[0].body
    docs = {}
    for index, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        stop = body[index + 1].lineno if index + 1 < len(body) else max(comments, default=0) + 1
        lines, line = [], node.end_lineno
        if line in comments:
            lines.append(comments[line][1])
        line += 1
        while line < stop and line in comments and comments[line][0] and not comments[line][1].startswith("---"):
            lines.append(comments[line][1])  # comment-only lines below, up to a "# --- section" line
            line += 1
        if lines:
            docs[node.target.id] = " ".join(lines)
    return docs


def _comments_by_line(source: str) -> dict[int, tuple[bool, str]]:
    """line -> (the line holds only the comment, its text without '#' and padding)."""
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            alone = not token.line[: token.start[1]].strip()
            found[token.start[0]] = (alone, token.string.lstrip("#").strip())
    return found
